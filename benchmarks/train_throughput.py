"""Training throughput (trajectories per second) and peak memory, with and without gradient
checkpointing, at one or more micro-batch sizes, with the matrix-product CPU attention
(diffmas.kernels.attention, the default) and with the fused SDPA kernel (``--attention both``), with
the frozen base's products on oneDNN-packed weights (diffmas.kernels.packed, the default) and with
``F.linear`` (``--packed both``), in bfloat16 (the default) or float32 (``--dtype both``), with the
LoRA products in float32 as PEFT does (the default) or in the model's dtype (``--lora-products both``).

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/train_throughput.py              # 0.5B, GSM8K
    python benchmarks/train_throughput.py --model DIR --task synthetic-arith --steps 1 # any model

Each setting runs in its own process (so that its peak resident memory is its own): a warm-up
micro-batch, then ``--steps`` timed optimizer steps of ``batch_size`` GSM8K trajectories each
(the full DiffMAS forward and backward pass: four agents, 10 latent steps per upstream agent, the
reference solution teacher-forced). Every row times the same trajectories (the first
``steps * max(batch sizes)`` of the seeded data order), so rows compare as ratios; ``--naive-row``
adds the brief's naive loop (batch 1, ``F.linear``, the fused attention kernel, PEFT's float32 LoRA
products) as their baseline:

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/train_throughput.py --naive-row --no-checkpointing-row \
        --repeat-question both --out runs/train-throughput-naive.json

Run it alone: anything else running changes it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(args: argparse.Namespace) -> dict:
    """One setting, in this process."""
    import torch

    from diffmas.train.config import TrainConfig
    from diffmas.train.trainer import Trainer

    cfg = TrainConfig(
        model=args.model,
        method=args.method,
        task=args.task,
        split="train",
        exclude_last=500,
        latent_steps=args.latent_steps,
        lora_dropout=0.0,
        batch_size=args.batch_size,
        grad_accum=1,
        max_steps=args.steps + 1,
        gradient_checkpointing=args.checkpointing,
        out=args.scratch,
        cpu_attention=args.cpu_attention == "on",
        packed=args.packed_weights == "on",
        dtype=args.one_dtype,
        repeat_question=args.one_repeat == "on",
        lora_float32=args.one_lora == "float32",
    )
    trainer = Trainer(cfg, progress=False)
    trainer.lm.model.train()
    trainer.train_step()  # warm-up: allocator, dispatch and first-call costs
    # Time the same trajectories at every batch size: the data order does not depend on it, so
    # start it again (the first batch size * steps examples of the seeded order).
    trainer.stream.load_state_dict({**trainer.stream.state_dict(), "epoch": 0, "index": 0})
    started = time.perf_counter()
    tokens, losses = 0, []
    for _ in range(args.steps):
        record = trainer.train_step()
        tokens += record["tokens"]
        losses.append(record["loss"])
    seconds = time.perf_counter() - started
    trajectories = args.steps * args.batch_size
    return {
        "method": args.method,
        "batch_size": args.batch_size,
        "gradient_checkpointing": args.checkpointing,
        "cpu_attention": args.cpu_attention == "on",
        "packed": args.packed_weights == "on",
        "dtype": args.one_dtype,
        "repeat_question": args.one_repeat == "on",
        "lora_products": args.one_lora,
        "latent_steps": args.latent_steps,
        "steps": args.steps,
        "trajectories": trajectories,
        "seconds": seconds,
        "trajectories_per_s": trajectories / seconds,
        "s_per_trajectory": seconds / trajectories,
        "target_tokens": tokens,
        "losses": losses,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def sides(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> list[str]:
    """The settings an on/off-style option asks for: its two values for "both", else the one given."""
    value = getattr(args, name)
    choices = next(a.choices for a in parser._actions if a.dest == name)
    return [c for c in choices if c != "both"] if value == "both" else [value]


def print_table(rows: list[dict], naive_rows: list[dict]) -> None:
    """The rows as a table; each gets its speed-up over the naive row with the same prompts."""
    print(
        "| batch | dtype | grad. checkpointing | attention | linear layers | question | LoRA products "
        "| trajectories/s | s/trajectory | vs naive | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        naive = next((n["s_per_trajectory"] for n in naive_rows if n["repeat_question"] == r["repeat_question"]), None)
        r["speedup_vs_naive"] = naive / r["s_per_trajectory"] if naive else None
        versus = f"{r['speedup_vs_naive']:.2f}x" if naive else "-"
        print(
            f"| {r['batch_size']} | {r['dtype']} | {'yes' if r['gradient_checkpointing'] else 'no'} | "
            f"{'matmul' if r['cpu_attention'] else 'fused SDPA'} | {'packed' if r['packed'] else 'F.linear'} | "
            f"{'every agent' if r['repeat_question'] else 'once'} | {r.get('lora_products', 'float32')} | "
            f"{r['trajectories_per_s']:.3f} | "
            f"{r['s_per_trajectory']:.2f} | {versus} | {r['peak_rss_mb']:.0f} |"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--method", default="diffmas", choices=["diffmas", "single_sft"])
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[4], help="micro-batch sizes (default: the trainer's default, 4)"
    )
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per setting")
    p.add_argument(
        "--attention",
        choices=["on", "off", "both"],
        default="on",
        help="CPU matrix-product attention on (the default), off (fused SDPA), or both, side by side",
    )
    p.add_argument(
        "--packed",
        choices=["on", "off", "both"],
        default="on",
        help="the frozen base's linear layers on oneDNN-packed weights (the default), off, or both",
    )
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float32", "both"],
        default="bfloat16",
        help="the model's dtype (float32 gives faithful upstream gradients: benchmarks/diagnostics/grad_fidelity.py)",
    )
    p.add_argument(
        "--repeat-question",
        choices=["on", "off", "both"],
        default="on",
        help="every agent's prompt states the question (on: LatentMAS's design, this script's default so "
        "that its rows compare with its earlier runs) or only the first's (off: the trainer's default, "
        "shorter trajectories)",
    )
    p.add_argument(
        "--lora-products",
        choices=["float32", "model", "both"],
        default="float32",
        help="LoRA products in float32 with inputs cast (PEFT's and the trainer's default), in the "
        "model's dtype on float32 weights, or both",
    )
    p.add_argument(
        "--naive-row",
        action="store_true",
        help="also time the brief's naive loop on the same trajectories (batch 1, F.linear, fused SDPA, "
        "no checkpointing; one per --repeat-question setting) and print every row's speed-up over the "
        "naive loop with the same prompts",
    )
    p.add_argument("--no-checkpointing-row", action="store_true", help="skip the gradient-checkpointing rows")
    p.add_argument("--out", default="benchmarks/results/train-throughput-qwen0.5b.json")
    # Internal: run one setting in this process and print its JSON.
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cpu-attention", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    p.add_argument("--packed-weights", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    p.add_argument("--one-dtype", default="bfloat16", help=argparse.SUPPRESS)
    p.add_argument("--one-repeat", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    p.add_argument("--one-lora", choices=["float32", "model"], default="float32", help=argparse.SUPPRESS)
    p.add_argument("--scratch", default="/tmp/diffmas-train-throughput", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    attention, packed, dtypes, repeats, loras = (
        sides(p, args, name) for name in ("attention", "packed", "dtype", "repeat_question", "lora_products")
    )
    trajectories = args.steps * max(args.batch_sizes)  # every row times the same ones
    settings = [
        (batch, checkpointing, att, pk, dt, rq, lp)
        for batch in args.batch_sizes
        for checkpointing in ((False,) if args.no_checkpointing_row else (False, True))
        for att in attention
        for pk in packed
        for dt in dtypes
        for rq in repeats
        for lp in loras
    ]
    if args.naive_row:  # one per prompt design: a row is compared with the naive loop on the same prompts
        settings[:0] = [(1, False, "off", "off", dtypes[0], rq, "float32") for rq in repeats]
    for batch, checkpointing, att, pk, dt, rq, lp in settings:
        scratch = f"{args.scratch}-{batch}-{int(checkpointing)}-{att}-{pk}-{dt}-{rq}-{lp}-{time.time_ns()}"
        cmd = [
            sys.executable,
            __file__,
            "--one",
            "--model",
            args.model,
            "--task",
            args.task,
            "--method",
            args.method,
            "--batch-size",
            str(batch),
            "--latent-steps",
            str(args.latent_steps),
            "--steps",
            str(trajectories // batch),
            "--scratch",
            scratch,
            "--cpu-attention",
            att,
            "--packed-weights",
            pk,
            "--one-dtype",
            dt,
            "--one-repeat",
            rq,
            "--one-lora",
            lp,
        ] + (["--checkpointing"] if checkpointing else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"batch {batch}, checkpointing {checkpointing}, cpu attention {att}, packed {pk}, {dt}, "
            f"question repeated {rq}, LoRA products {lp}: "
            f"{r['s_per_trajectory']:.2f} s/trajectory, peak {r['peak_rss_mb']:.0f} MB, "
            f"losses {' '.join(f'{x:.4f}' for x in r['losses'])}",
            flush=True,
        )
    print(
        f"\n{args.model}, {args.method}, {args.task}, {args.latent_steps} latent steps, the same {trajectories} "
        "timed trajectories in every row\n"
    )
    print_table(rows, rows[: len(repeats)] if args.naive_row else [])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "task": args.task, "rows": rows}, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
