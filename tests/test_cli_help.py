"""``diffmas <command> --help`` prints from the stored options without importing torch, and the
stored options are those of the live parsers."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from diffmas.cli import SUBCOMMANDS, WITHOUT_STORED_HELP, helptext, main

STORED = [name for name in SUBCOMMANDS if name not in WITHOUT_STORED_HELP]


@pytest.mark.parametrize("name", STORED)
def test_stored_help_is_the_live_parsers(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    live = importlib.import_module(SUBCOMMANDS[name][0]).parser().format_help()
    data = helptext.stored(name)
    assert data is not None, f"no stored help for {name}: run `python -m diffmas.cli.write_help`"
    assert helptext.rebuild(data).format_help() == live, (
        f"the stored help of `diffmas {name}` is out of date: run `python -m diffmas.cli.write_help`"
    )


def test_help_imports_no_torch():
    code = (
        "import sys\nfrom diffmas.cli import main\nrc = main(['eval', '--help'])\n"
        "print('rc', rc, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"COLUMNS": "100", "PATH": ""}
    ).stdout
    assert out.rstrip().endswith("rc 0 False False")
    assert "--latent-steps LATENT_STEPS" in out and "--batch-size BATCH_SIZE" in out


def test_help_flag_is_seen_as_argparse_sees_it():
    assert helptext.asks_for_help(["--task", "gsm8k", "-h"])
    assert helptext.asks_for_help(["--help"])
    assert not helptext.asks_for_help(["--question", "--help me"])
    assert not helptext.asks_for_help(["--", "--help"])


def test_without_the_file_the_live_parser_answers(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(helptext, "HELP_FILE", tmp_path / "help.json")
    assert helptext.stored("tasks") is None
    assert main(["tasks", "--help"]) == 0
    assert "--no-sizes" in capsys.readouterr().out
    (tmp_path / "help.json").write_text(json.dumps({}))
    assert main(["tasks", "--help"]) == 0
    assert "--no-sizes" in capsys.readouterr().out


def test_write_stores_every_subcommand(tmp_path):
    helptext.write(tmp_path / "help.json")
    assert sorted(json.loads((tmp_path / "help.json").read_text())) == sorted(STORED)


def test_an_action_that_cannot_be_stored_is_named():
    parser = argparse.ArgumentParser(prog="diffmas x")
    parser.add_argument("-v", action="count")
    with pytest.raises(ValueError, match="_CountAction cannot be stored"):
        helptext.describe(parser)
