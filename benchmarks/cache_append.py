"""What appending one column to the shared trace costs, per step of a 24-layer model.

transformers' ``DynamicLayer`` appends by ``cat([keys, new])``, copying the whole trace at every
step; ``diffmas.cache.GrowingLayer`` (the default) writes the new column into spare capacity. Each
step here does what a decode or latent step does with the cache: one append per layer, then the
float32 copy of keys and values that the matrix-product attention reads
(``diffmas.models.attention``). Shapes are those of Qwen2.5-0.5B (2 key-value heads of 64), in
bfloat16; rounds alternate the two kinds, and each figure is milliseconds per step.

    python benchmarks/cache_append.py --out benchmarks/results/cache_append.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers.cache_utils import DynamicLayer

from diffmas.cache import GrowingLayer


def time_steps(cls: type, batch: int, length: int, layers: int, heads: int, dim: int, steps: int) -> float:
    cache = [cls() for _ in range(layers)]
    with torch.inference_mode():
        for layer in cache:
            layer.update(torch.randn(batch, heads, length, dim, dtype=torch.bfloat16),
                         torch.randn(batch, heads, length, dim, dtype=torch.bfloat16))
        new = torch.randn(batch, heads, 1, dim, dtype=torch.bfloat16)
        t0 = time.perf_counter()
        for _ in range(steps):
            for layer in cache:
                keys, values = layer.update(new, new)
                keys.float(), values.float()
        return (time.perf_counter() - t0) / steps * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["1x150", "1x700", "8x150", "8x700", "16x150", "16x700"],
                   help="BATCHxLENGTH of the cached trace")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--heads", type=int, default=2, help="key-value heads")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/cache_append.json")
    args = p.parse_args()
    rows = []
    print("| batch | cache length | DynamicLayer (cat) ms/step | GrowingLayer ms/step | saved ms/step |")
    print("|---|---|---|---|---|")
    for shape in args.shapes:
        batch, length = map(int, shape.split("x"))
        times: dict[str, list[float]] = {"cat": [], "growing": []}
        for _ in range(args.rounds):
            for name, cls in (("cat", DynamicLayer), ("growing", GrowingLayer)):
                times[name].append(time_steps(cls, batch, length, args.layers, args.heads, args.head_dim, args.steps))
        cat, growing = statistics.median(times["cat"]), statistics.median(times["growing"])
        rows.append({"batch": batch, "length": length, "cat_ms": cat, "growing_ms": growing, "rounds": times})
        print(f"| {batch} | {length} | {cat:.2f} | {growing:.2f} | {cat - growing:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows},
                                         indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
