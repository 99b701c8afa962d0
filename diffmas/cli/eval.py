"""``diffmas eval``: evaluate a method on a task and print a summary table."""

from __future__ import annotations

from diffmas.cli._common import config_from, config_parser, quiet_transformers
from diffmas.evaluate import EvalConfig, evaluate
from diffmas.records import RECORDS, SUMMARY
from diffmas.report import summary_table, warnings


def print_summary(summary: dict) -> None:
    print()
    print(summary_table([summary]))
    if summary["skipped_rows"]:
        reasons = "; ".join(summary["skipped_reasons"][:3])
        print(f"\nskipped {summary['skipped_rows']} malformed data rows ({reasons})")
    if "stability" in summary:
        st = summary["stability"]
        seeds = ", ".join(f"{100 * a:.1f}%" for a in st["per_seed_accuracy"])
        print(
            f"\n{st['samples']} samples per problem: accuracy per seed {seeds} (mean {100 * st['mean']:.1f}% +- "
            f"{100 * st['std']:.1f}); majority vote {100 * st['majority_accuracy']:.1f}%; answers agree on "
            f"{100 * st['agreement']:.1f}% of problems"
        )
    print(f"\npeak memory {summary['peak_memory_mb']:.0f} MB, wall time {summary['wall_seconds']:.1f}s")
    for line in warnings(summary):
        print(f"warning: {line}")


def parser():
    return config_parser("diffmas eval", "Evaluate a method on a task.", EvalConfig)


def main(argv: list[str]) -> int:
    cfg, _ = config_from(parser(), EvalConfig, argv)
    quiet_transformers()
    summary = evaluate(cfg)
    print_summary(summary)
    out = cfg.out_dir()
    print(f"records: {out / RECORDS}\nsummary: {out / SUMMARY}")
    return 0
