"""``diffmas collect``: run a teacher system over training problems and keep its correct trajectories.

diffmas collect --task gsm8k --exclude-last 500 --limit 1000 --samples 2 --out runs/collect-gsm8k
diffmas train --config ... --trajectories runs/collect-gsm8k --role-steps 20
"""

from __future__ import annotations

from diffmas.cli._common import parse_config, quiet_transformers
from diffmas.train.collect import ATTEMPTS, TRAJECTORIES, CollectConfig, collect


def main(argv: list[str]) -> int:
    cfg, _ = parse_config(
        "diffmas collect", "Collect correct trajectories of a sampled text multi-agent teacher.", CollectConfig, argv
    )
    quiet_transformers()
    summary = collect(cfg)
    out = cfg.out_dir()
    print(
        f"\n{summary['kept']} of {summary['attempts']} attempts correct ({summary['acceptance']:.1%}); "
        f"{summary['problems_solved']} of {summary['problems']} problems solved at least once"
    )
    print(f"attempts: {out / ATTEMPTS}\ntrajectories: {out / TRAJECTORIES}")
    return 0
