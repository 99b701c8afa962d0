"""``diffmas compare``: evaluation runs side by side (Markdown table, CSV, plots, HTML report).

diffmas compare runs/gsm8k-single runs/gsm8k-latent_mas runs/demo --out runs/compare
"""

from __future__ import annotations

import argparse

from diffmas.compare import compare


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffmas compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "runs",
        nargs="+",
        help="run directories written by `diffmas eval --out` (or `diffmas demo`), or summary.json files",
    )
    p.add_argument("--out", default="runs/compare", help="where the CSV, plot and HTML report go")
    p.add_argument("--title", default=None, help="of the plot and the report (default: the runs' tasks and models)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    result = compare(args.runs, args.out, args.title)
    print(result["table"])
    print("\n" + "\n".join(result["files"]))
    return 0
