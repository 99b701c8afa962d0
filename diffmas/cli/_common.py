"""Argument parsing shared by subcommands."""

from __future__ import annotations

import argparse
import os

from diffmas.config import add_arguments, from_args


def parse_config(prog: str, description: str, cls: type, argv: list[str], extra=None):
    """Parse ``argv`` into a ``cls`` config; ``--config FILE.yaml`` supplies defaults that flags
    override. ``extra(parser)`` may add options that are not config fields. Returns (config, ns).
    argparse errors raise SystemExit(2), which ``diffmas.cli.main`` turns into the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file with default values for these options")
    add_arguments(parser, cls)
    if extra:
        extra(parser)
    ns = parser.parse_args(argv)
    return from_args(cls, ns, ns.config), ns


def quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
