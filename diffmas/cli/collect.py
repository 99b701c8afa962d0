"""``diffmas collect``: sample a teacher on training problems and keep its correct answers.

diffmas collect --task gsm8k --exclude-last 1000 --limit 1000 --method single --samples 4 --out runs/collect-gsm8k
diffmas train --config ... --trajectories runs/collect-gsm8k --target trajectory
"""

from __future__ import annotations

from diffmas.cli._common import config_from, config_parser, quiet_transformers
from diffmas.train.collect import ATTEMPTS, TRAJECTORIES, CollectConfig, collect


def parser():
    return config_parser(
        "diffmas collect",
        "Rejection sampling: keep the correct answers of a sampled teacher (single, text_mas or latent_mas).",
        CollectConfig,
    )


def main(argv: list[str]) -> int:
    cfg, _ = config_from(parser(), CollectConfig, argv)
    quiet_transformers()
    summary = collect(cfg)
    out = cfg.out_dir()
    print(
        f"\n{summary['correct']} of {summary['attempts']} attempts correct; kept {summary['kept']} "
        f"({summary['acceptance']:.1%} of attempts, {summary['repeats_dropped']} repeated texts dropped); "
        f"{summary['problems_solved']} of {summary['problems']} problems solved at least once"
    )
    if summary["attempts_this_run"]:
        print(
            f"cost: {summary['attempts_this_run']} attempts in {summary['seconds_this_run']:.0f} s "
            f"({summary['seconds_per_attempt']:.2f} s and {summary['generated_tokens_per_attempt']:.0f} generated "
            "tokens per attempt)"
        )
    print(f"attempts: {out / ATTEMPTS}\ntrajectories: {out / TRAJECTORIES}")
    return 0
