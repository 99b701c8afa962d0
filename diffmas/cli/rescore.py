"""``diffmas rescore``: score saved evaluation outputs again with the current answer extraction."""

from __future__ import annotations

import argparse

from diffmas.evaluate import rescore
from diffmas.report import summary_table, warnings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffmas rescore",
        description="Re-extract and re-score the answers of finished `diffmas eval` runs from their saved "
        "outputs (no model is run), rewriting records.jsonl and summary.json.",
    )
    p.add_argument("runs", nargs="+", help="evaluation output directories")
    p.add_argument("--show", type=int, default=10, help="list at most this many changed predictions per run")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    summaries = []
    for run in args.runs:
        summary, changed = rescore(run)
        summaries.append(summary)
        print(
            f"{run}: {len(changed)} of {summary['n']} predictions changed; "
            f"{summary['extraction_failures']} without an answer"
        )
        for ex_id, before, after in changed[: args.show]:
            print(f"  {ex_id}: {before!r} -> {after!r}")
    print()
    print(summary_table(summaries))
    for line in (w for s in summaries for w in warnings(s)):
        print(f"warning: {line}")
    return 0
