"""The ``diffmas`` command: thin subcommands over the Python API, each with ``main(argv) -> int``."""

from __future__ import annotations

import errno
import sys

from diffmas import logs
from diffmas.cli import helptext
from diffmas.cli.commands import SUBCOMMANDS, WITHOUT_STORED_HELP
from diffmas.errors import DiffMASError


def usage() -> str:
    lines = ["usage: diffmas <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `diffmas <command> --help` for the options of a command; -v (or -vv) for more messages."]
    return "\n".join(lines)


VERBOSE = {"-v": 1, "--verbose": 1, "-vv": 2, "-vvv": 3}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # -v / -vv before the command or among its options (lm-eval's options are all lm_eval's own).
    command_at = next((i for i, a in enumerate(argv) if a not in VERBOSE), len(argv))
    ours = len(argv) if argv[command_at : command_at + 1] != ["lm-eval"] else command_at
    verbosity = sum(VERBOSE.get(a, 0) for a in argv[:ours])
    argv = [a for i, a in enumerate(argv) if not (i < ours and a in VERBOSE)]
    logs.configure(verbosity)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if name not in WITHOUT_STORED_HELP and helptext.asks_for_help(rest) and helptext.print_stored_help(name):
        return 0
    import importlib

    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        return module.main(rest)
    except DiffMASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        message = _os_error_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1


def _os_error_message(exc: OSError) -> str | None:
    """What to do about a failed write, for the failures a user can fix (None: a real bug)."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the disk while writing{where}: free some space, then run the same command "
            "with --resume (what was written before stays valid)"
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where} ({exc.strerror}); choose another --out"
    return None
