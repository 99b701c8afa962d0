"""``diffmas export``: a trained run's inference files with a model card; optionally on the hub."""

from __future__ import annotations

import argparse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffmas export",
        description="Copy what inference needs from a `diffmas train` run (adapters, communication map, settings) "
        "into a folder with a model card, loadable by `diffmas eval --adapter DIR` and by PEFT; optionally upload "
        "it to the Hugging Face hub.",
    )
    p.add_argument("checkpoint", help="a `diffmas train` output directory or one of its checkpoints")
    p.add_argument("--out", required=True, help="the export folder (created)")
    p.add_argument(
        "--results", nargs="*", default=[], metavar="SUMMARY", help="`diffmas eval` outputs of this checkpoint to quote"
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--hub-repo", default=None, metavar="OWNER/NAME", help="also upload the folder to this repo")
    p.add_argument("--private", action="store_true", help="create the hub repository as private")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from diffmas.train.export import export, push_to_hub

    out = export(args.checkpoint, args.out, args.results, force=args.force)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"exported {args.checkpoint} to {out} ({size / 1e6:.1f} MB); model card: {out / 'README.md'}")
    if args.hub_repo:
        print(f"uploaded: {push_to_hub(out, args.hub_repo, private=args.private)}")
    return 0
