"""``diffmas demo``: the main job. Trains DiffMAS and its single-agent control briefly on built-in
problems with the default offline model, evaluates every method on held-out problems, prints one
comparison table and writes a plot."""

from __future__ import annotations

from pathlib import Path

from diffmas.cli._common import config_from, config_parser, quiet_transformers
from diffmas.demo import METHODS, DemoConfig, report, run_demo


def parser():
    return config_parser("diffmas demo", __doc__, DemoConfig)


def main(argv: list[str]) -> int:
    cfg, _ = config_from(parser(), DemoConfig, argv)
    quiet_transformers()
    print(
        f"Training diffmas and single_sft ({cfg.train_steps} steps x {cfg.train_batch_size} problems each), then "
        f"evaluating {', '.join(METHODS)} on {cfg.limit} held-out {cfg.task} problems with {cfg.model}."
    )
    print(
        f"On 2 CPU cores this takes about {cfg.estimate_minutes():.0f} minutes (less with more cores). "
        "Finished stages are kept: stop and rerun to resume.",
        flush=True,
    )
    summaries = run_demo(cfg)
    for line in report(summaries):
        print(line)
    out = Path(cfg.out)
    print(
        f"\nplot: {out / 'demo.png'}\nsummary: {out / 'summary.json'}\n"
        f"per-example records: {out}/<method>/records.jsonl"
    )
    return 0
