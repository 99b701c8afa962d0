"""``diffmas train``: train a latent multi-agent system (or the single-agent control) end to end.

diffmas train --config configs/gsm8k-qwen0.5b.yaml [--flags]
accelerate launch --multi_gpu --num_processes 2 -m diffmas train --config ...   # data parallel (CPU too)
"""

from __future__ import annotations

import json

from diffmas.cli._common import config_from, config_parser, quiet_transformers
from diffmas.train.config import TrainConfig


def parser():
    return config_parser("diffmas train", "Train LoRA adapters (and the communication map) end to end.", TrainConfig)


def main(argv: list[str]) -> int:
    cfg, _ = config_from(parser(), TrainConfig, argv)
    quiet_transformers()
    from diffmas.train.trainer import LOG, Trainer

    try:
        trainer = Trainer(cfg)
        if trainer.dist.main:
            n = sum(p.numel() for p in trainer.params)
            data = (
                f"{len(trainer.items)} trajectories ({cfg.trajectories}) of the {len(trainer.examples)} examples"
                if cfg.trajectories
                else f"{len(trainer.examples)} examples"
            )
            stages = f" ({cfg.role_steps} role steps, then joint)" if cfg.role_steps else ""
            mixed = trainer.cfg.mixed_precision
            stages += f", mixed precision {mixed}" if mixed != "no" else ""
            print(
                f"training {cfg.method} on {data} of {trainer.source}: {trainer.total_steps} steps{stages}, "
                f"{n:,} trainable parameters -> {trainer.out}",
                flush=True,
            )
        summary = trainer.train()
    finally:
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.dist.main:
        last = summary["last"]
        if last is not None:
            print(f"step {summary['steps']}: loss {last['loss']:.4f}")
        if not summary["finished"]:
            print(
                f"stopped at step {summary['steps']} of {trainer.total_steps} (--until-step); rerun with --resume "
                "to continue"
            )
        if (traces := summary["traces"]) is not None:
            print(
                f"upstream traces: {traces['built']} built ({traces['build_seconds']:.1f} s), {traces['reused']} read "
                f"back, {traces['mb_per_example']} MB per example, in {traces['dir']}"
            )
        print(f"log: {trainer.out / LOG}\nadapters: {summary['final']}")
        (trainer.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0
