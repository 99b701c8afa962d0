"""One LoRA layer's products, float32 (PEFT's default: the bfloat16 input cast to the adapter's
float32 weights) against the model's dtype (the float32 weights cast to bfloat16), by row count.

    python benchmarks/lora_products.py

Explains the training-step comparison of ``benchmarks/train_throughput.py --lora-products both``:
a DiffMAS step runs LoRA layers on a few rows (latent steps: one per trajectory) and on many
(prompts and targets: hundreds per trajectory). Times are medians of repeated calls of
``B(A(x))`` with rank 8 and width 896 (Qwen2.5-0.5B's), forward alone and forward + backward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def median_us(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024])
    p.add_argument("--width", type=int, default=896)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--out", default="benchmarks/results/lora_products.json")
    args = p.parse_args()
    torch.manual_seed(0)
    a = torch.randn(args.rank, args.width, requires_grad=True)  # float32, as PEFT keeps them
    b = torch.randn(args.width, args.rank, requires_grad=True)

    def float32(x):  # PEFT: the input is cast to the weights' dtype, the result back
        return F.linear(F.linear(x.float(), a), b).to(x.dtype)

    def model_dtype(x):  # the weights are cast to the input's dtype
        return F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype))

    rows = []
    print("| rows | forward float32 us | forward bf16 us | fwd+bwd float32 us | fwd+bwd bf16 us |")
    print("|---|---|---|---|---|")
    for n in args.rows:
        x = torch.randn(n, args.width, dtype=torch.bfloat16)
        row = {"rows": n}
        for name, fn in (("float32", float32), ("model", model_dtype)):
            with torch.no_grad():
                row[f"forward_{name}_us"] = median_us(lambda: fn(x), args.repeats)

            def both():
                fn(x).float().sum().backward()
            row[f"forward_backward_{name}_us"] = median_us(both, max(10, args.repeats // 4))
        rows.append(row)
        print(f"| {n} | {row['forward_float32_us']:.0f} | {row['forward_model_us']:.0f} | "
              f"{row['forward_backward_float32_us']:.0f} | {row['forward_backward_model_us']:.0f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
