"""What one forward of each kind costs: prefill (tokens/s), a latent step and a decode step
(milliseconds) at a given batch size and cache length, measured side by side in one process.

    python benchmarks/step_costs.py --batch-size 8 --lengths 150 700
    python benchmarks/step_costs.py --attention both   # matmul attention against the fused kernel
    python benchmarks/step_costs.py --fuse both        # q/k/v and gate/up as one product or three/two
    python benchmarks/step_costs.py --batch-invariant both --batch-size 1 8 16  # the price of exactness
    python benchmarks/step_costs.py --growing-cache both --batch-size 1 8 16   # appends without re-copying

Explains where latent_mas and text_mas spend their time: prefill is compute-bound, decode and
latent steps are bound by reading the weights (a latent step skips the output head).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from diffmas.decoding import decode
from diffmas.engine import LM
from diffmas.kernels.attention import NAME
from diffmas.kernels.exact import make_batch_invariant
from diffmas.kernels.packed import fuse_sibling_layers
from diffmas.latent import Realigner, run_latent_steps
from diffmas.models import load_model


def measure(lm: LM, batch: int, length: int, steps: int) -> dict:
    vocab = lm.head.weight.shape[0]
    prompts = [[(100 + i % 1000) % vocab for i in range(length)]] * batch
    realigner = Realigner.for_lm(lm)
    with torch.inference_mode():
        cache = lm.new_cache(batch)
        t0 = time.perf_counter()
        hidden = lm.prefill(cache, "A", prompts)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_latent_steps(lm, cache, "A", hidden, steps, realigner)
        latent = (time.perf_counter() - t0) / steps
        # Decode exactly `steps` tokens: no stop tokens, so no row leaves the batch.
        stop, lm.stop_ids = lm.stop_ids, torch.tensor([], dtype=torch.long)
        try:
            t0 = time.perf_counter()
            decode(lm, cache, "A", hidden, steps)
            decoding = (time.perf_counter() - t0) / (steps - 1)  # the last token needs no forward
        finally:
            lm.stop_ids = stop
    return {
        "batch": batch,
        "length": length,
        "prefill_tokens_per_s": batch * length / prefill,
        "latent_step_ms": 1000 * latent,
        "decode_step_ms": 1000 * decoding,
        "latent_over_decode": latent / decoding,
    }


def median_round(runs: list[dict]) -> dict:
    """Each figure's median over the rounds (so one slow round does not decide a row)."""
    out = dict(runs[0])
    for key in ("prefill_tokens_per_s", "latent_step_ms", "decode_step_ms", "latent_over_decode"):
        out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    p.add_argument("--lengths", type=int, nargs="+", default=[150, 700])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument(
        "--attention",
        choices=["matmul", "sdpa", "both"],
        default="matmul",
        help="attention of one-token queries: matmul (diffmas.kernels.attention, the CPU default), "
        "the fused SDPA kernel, or both side by side",
    )
    p.add_argument(
        "--fuse",
        choices=["on", "off", "both"],
        default="on",
        help="sibling projections (q/k/v, gate/up) as one product (diffmas.kernels.packed, the CPU "
        "default) or one product each, or both side by side",
    )
    p.add_argument(
        "--batch-invariant",
        choices=["on", "off", "both"],
        default="off",
        help="batch-invariant inference (diffmas.kernels.exact: attention summed in a per-row order, "
        "products of few rows padded) or the default, or both side by side",
    )
    p.add_argument(
        "--growing-cache",
        choices=["on", "off", "both"],
        default="on",
        help="traces that append into spare capacity (diffmas.kv_trace.GrowingLayer, the default) or "
        "transformers' DynamicLayer (copies the whole trace at every append), or both side by side",
    )
    p.add_argument("--out", default="benchmarks/results/step-costs-qwen0.5b.json")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds over every setting, interleaved; each row reports the median round",
    )
    args = p.parse_args()
    lm = LM(*load_model(args.model, dtype="bfloat16"), name=args.model)

    def sides(value: str) -> list[str]:
        return ["on", "off"] if value == "both" else [value]

    variants = [
        (a, f, e, g)
        for a in (["matmul", "sdpa"] if args.attention == "both" else [args.attention])
        for f in sides(args.fuse)
        for e in sides(args.batch_invariant)
        for g in sides(args.growing_cache)
    ]
    rounds: dict[tuple, list[dict]] = {}
    # Settings take turns within every round, so a slow spell of the machine hits them alike.
    for _ in range(args.repeats):
        for attention, fuse, exact, growing in variants:
            lm.growing_cache = growing == "on"
            make_batch_invariant(lm.model, on=False)
            lm.model.set_attn_implementation(NAME if attention == "matmul" else "sdpa")
            make_batch_invariant(lm.model, on=exact == "on")
            fuse_sibling_layers(lm.model, on=fuse == "on")
            measure(lm, 1, 16, 3)  # warm-up: first calls pay one-off allocation, dispatch and packing costs
            for b in args.batch_size:
                for n in args.lengths:
                    rounds.setdefault((attention, fuse, exact, growing, b, n), []).append(measure(lm, b, n, args.steps))
    rows = [
        dict(median_round(runs), attention=a, fused=f, batch_invariant=e, growing_cache=g)
        for (a, f, e, g, _, _), runs in rounds.items()
    ]
    print(
        "| attention | fused q/k/v, gate/up | batch-invariant | growing cache | batch | cache length | prefill tok/s "
        "| latent step ms | decode step ms | latent/decode |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['attention']} | {r['fused']} | {r['batch_invariant']} | {r['growing_cache']} | {r['batch']} | "
            f"{r['length']} | "
            f"{r['prefill_tokens_per_s']:.0f} | "
            f"{r['latent_step_ms']:.0f} | {r['decode_step_ms']:.0f} | {r['latent_over_decode']:.2f} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
