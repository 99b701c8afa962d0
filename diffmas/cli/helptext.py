"""``--help`` without importing torch: every subcommand's options, stored in ``help.json``.

A subcommand's options are declared by config dataclasses that live beside the code using them,
in modules that import torch and transformers (seconds). ``diffmas <command> --help`` prints from
this file instead; the parser is rebuilt from it, so the text wraps to the terminal as argparse's
own does. The file is generated from the live parsers (``python -m diffmas.cli.write_help``) and
tests/test_cli_help.py fails when it no longer matches them.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from diffmas.cli.commands import SUBCOMMANDS, WITHOUT_STORED_HELP

HELP_FILE = Path(__file__).with_name("help.json")
HELP_FLAGS = ("-h", "--help")

_FORMATTERS = {c.__name__: c for c in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter)}
_KINDS = {
    argparse._HelpAction: "help",
    argparse._StoreAction: "store",
    argparse._StoreTrueAction: "store_true",
    argparse.BooleanOptionalAction: "boolean_optional",
}


def asks_for_help(argv: list[str]) -> bool:
    """Whether argparse would print the help for ``argv`` (a help flag before any ``--``)."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    return any(a in HELP_FLAGS for a in head)


def describe(parser: argparse.ArgumentParser) -> dict:
    """What ``format_help`` reads of a parser, as plain data."""
    formatter = parser.formatter_class.__name__
    if formatter not in _FORMATTERS:
        raise ValueError(f"{parser.prog}: formatter {formatter} cannot be stored; add it to _FORMATTERS")
    actions = []
    for action in parser._actions:
        kind = _KINDS.get(type(action))
        if kind is None:
            raise ValueError(f"{parser.prog}: {type(action).__name__} cannot be stored; add it to _KINDS")
        if "%(" in (action.help or ""):
            raise ValueError(f"{parser.prog}: {action.dest}'s help formats argparse fields, which are not stored")
        choices = list(action.choices) if action.choices is not None else None
        actions.append(
            {
                "kind": kind,
                "flags": list(action.option_strings),
                "dest": action.dest,
                "nargs": action.nargs,
                "metavar": action.metavar,
                "choices": choices,
                "required": action.required,
                "help": action.help,
            }
        )
    return {"prog": parser.prog, "description": parser.description, "formatter": formatter, "actions": actions}


def rebuild(data: dict) -> argparse.ArgumentParser:
    """A parser whose help reads as the described one's (it parses nothing useful)."""
    parser = argparse.ArgumentParser(
        prog=data["prog"],
        description=data["description"],
        formatter_class=_FORMATTERS[data["formatter"]],
        add_help=False,
    )
    for a in data["actions"]:
        kind = a["kind"]
        if kind == "help":
            parser.add_argument(*a["flags"], action="help", help=a["help"])
            continue
        kw = {"help": a["help"], "required": a["required"]} if a["flags"] else {"help": a["help"]}
        if kind == "store":
            kw.update(nargs=a["nargs"], metavar=a["metavar"], choices=a["choices"])
        elif kind == "store_true":
            kw["action"] = "store_true"
        else:
            kw.update(action=argparse.BooleanOptionalAction, choices=a["choices"])
        names = a["flags"] or [a["dest"]]
        if kind == "boolean_optional":
            names = names[::2]  # the action adds each --no-X after its --X itself
        action = parser.add_argument(*names, **({"dest": a["dest"]} if a["flags"] else {}), **kw)
        action.help = a["help"]  # BooleanOptionalAction appends its default to the text it was given
    return parser


def stored(name: str) -> dict | None:
    """The stored description of subcommand ``name``, or None (no file, or not in it)."""
    try:
        return json.loads(HELP_FILE.read_text()).get(name)
    except (OSError, ValueError):
        return None


def print_stored_help(name: str) -> bool:
    """Print subcommand ``name``'s help from the stored file; False if it is not there."""
    data = stored(name)
    if data is None:
        return False
    rebuild(data).print_help()
    return True


def live_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's own parser (imports every subcommand: slow)."""
    return {
        name: importlib.import_module(module).parser()
        for name, (module, _) in SUBCOMMANDS.items()
        if name not in WITHOUT_STORED_HELP
    }


def write(path: Path = HELP_FILE) -> None:
    data = {name: describe(p) for name, p in live_parsers().items()}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
