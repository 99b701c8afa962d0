"""Argument parsing shared by subcommands."""

from __future__ import annotations

import argparse
import os

from diffmas.config import add_arguments, from_args


def config_parser(prog: str, description: str, cls: type, extra=None) -> argparse.ArgumentParser:
    """A parser with one flag per field of the ``cls`` config and ``--config FILE.yaml``.
    ``extra(parser)`` may add options that are not config fields."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file with default values for these options")
    add_arguments(parser, cls)
    if extra:
        extra(parser)
    return parser


def config_from(parser: argparse.ArgumentParser, cls: type, argv: list[str]):
    """Parse ``argv`` into a ``cls`` config; the ``--config`` YAML supplies defaults that flags
    override. Returns (config, namespace). argparse errors raise SystemExit(2), which
    ``diffmas.cli.main`` turns into the exit code."""
    ns = parser.parse_args(argv)
    return from_args(cls, ns, ns.config), ns


def parse_config(prog: str, description: str, cls: type, argv: list[str], extra=None):
    """``config_from`` on a fresh ``config_parser``."""
    return config_from(config_parser(prog, description, cls, extra), cls, argv)


def quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
