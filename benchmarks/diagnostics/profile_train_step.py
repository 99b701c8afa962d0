"""Where one training micro-batch spends its time: torch.profiler over the forward and backward
pass of a DiffMAS (or single_sft) micro-batch on GSM8K, top operators by self CPU time.

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/profile_train_step.py             # diffmas, batch 4
    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/profile_train_step.py --lora-dropout 0.05
    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/profile_train_step.py --by-shape  # by input shape

The first micro-batch is a warm-up; the second is profiled. Run it alone.
"""

from __future__ import annotations

import argparse
import time

from torch.profiler import ProfilerActivity, profile

from diffmas.train.config import TrainConfig
from diffmas.train.trainer import Trainer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--method", default="diffmas", choices=["diffmas", "single_sft"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--rows", type=int, default=20)
    p.add_argument(
        "--by-shape",
        action="store_true",
        help="one row per operator and input shapes (e.g. the attention of latent steps apart from that of prompts)",
    )
    args = p.parse_args()
    cfg = TrainConfig(
        model=args.model,
        method=args.method,
        task="gsm8k",
        exclude_last=500,
        batch_size=args.batch_size,
        max_steps=1,
        latent_steps=args.latent_steps,
        lora_dropout=args.lora_dropout,
        gradient_checkpointing=args.gradient_checkpointing,
        out="/tmp/diffmas-profile",
    )
    trainer = Trainer(cfg, progress=False)
    trainer.lm.model.train()
    batch = trainer.items[: args.batch_size]
    for label in ("warm-up", "profiled"):
        trainer.optimizer.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
            t0 = time.perf_counter()
            out = trainer.loss(batch)
            t1 = time.perf_counter()
            out.loss.backward()
            t2 = time.perf_counter()
        print(f"{label}: forward {t1 - t0:.1f}s, backward {t2 - t1:.1f}s, {int(out.tokens.sum())} target tokens")
    table = prof.key_averages(group_by_input_shape=args.by_shape).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60, max_shapes_column_width=100
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
