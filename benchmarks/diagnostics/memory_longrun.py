"""Long-run memory check: many problems through one method, resident memory sampled after every
batch. Memory must not grow with the number of problems processed (a leak of traces, caches or
autograd graphs would show as a slope).

    python benchmarks/diagnostics/memory_longrun.py        # 1,000 problems, latent_mas, tiny model
    python benchmarks/diagnostics/memory_longrun.py --model qwen2.5-coder-0.5b-instruct --problems 200

The verdict compares the resident memory over the last fifth of the run with the first fifth
after a warm-up (allocators and caches settle during the first batches): growth above
``--tolerance-mb`` fails (exit code 1).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import psutil
import torch
from tqdm.auto import tqdm

from diffmas.engine import LM
from diffmas.methods import MethodConfig, build_method
from diffmas.models import build_tiny_model, load_model
from diffmas.tasks import get_task


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (a random 2-layer Qwen2 built in-process) or a model name")
    p.add_argument("--method", default="latent_mas")
    p.add_argument("--problems", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=100, help="problems before the baseline is taken")
    p.add_argument("--tolerance-mb", type=float, default=32.0)
    p.add_argument("--out", default="benchmarks/results/memory-longrun-tiny.json")
    args = p.parse_args()
    if args.model == "tiny":
        lm = LM(*build_tiny_model("qwen2", seed=0), name="tiny-qwen2")
    else:
        lm = LM(*load_model(args.model, dtype="bfloat16"), name=args.model)
    task = get_task("synthetic-arith")
    problems = task.load(split="train", limit=args.problems).examples
    method = build_method(
        args.method,
        lm,
        MethodConfig(latent_steps=args.latent_steps, max_new_tokens=args.max_new_tokens),
        task,
        topology="sequential",
    )
    process = psutil.Process()
    samples = []  # (problems done, RSS MB)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in tqdm(range(0, len(problems), args.batch_size), desc=args.method, unit="batch"):
            batch = problems[start : start + args.batch_size]
            traces = method.run([ex.question for ex in batch], [ex.id for ex in batch])
            for ex, trace in zip(batch, traces):
                task.score(trace.final_text, ex)
            del traces
            gc.collect()
            samples.append((start + len(batch), process.memory_info().rss / 2**20))
    seconds = time.perf_counter() - started
    settled = [s for s in samples if s[0] > args.warmup] or samples
    fifth = max(1, len(settled) // 5)
    first = sum(m for _, m in settled[:fifth]) / fifth
    last = sum(m for _, m in settled[-fifth:]) / fifth
    growth = last - first
    ok = growth <= args.tolerance_mb
    result = {
        "model": lm.name,
        "method": args.method,
        "problems": len(problems),
        "batch_size": args.batch_size,
        "seconds": seconds,
        "rss_first_fifth_mb": first,
        "rss_last_fifth_mb": last,
        "growth_mb": growth,
        "peak_rss_mb": max(m for _, m in samples),
        "tolerance_mb": args.tolerance_mb,
        "ok": ok,
        "samples": samples,
    }
    print(f"\n{len(problems)} problems through {args.method} on {lm.name} in {seconds:.0f}s")
    print(
        f"resident memory after warm-up: {first:.1f} MB (first fifth) -> {last:.1f} MB (last fifth), "
        f"growth {growth:+.1f} MB (tolerance {args.tolerance_mb:.0f} MB): {'OK' if ok else 'GROWS'}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
