"""Thread settings: decode, latent and prefill speed with 1 thread against all cores, side by side.

Decoding at batch 1 reads every weight once per token: with the memory bus the limit, one thread
might do as well as two. This times both on the same model in one process, alternating rounds
(1, N, 1, N, ...) so that whatever else the machine does touches both alike; each figure is the
median over the rounds. The engine's default is PyTorch's (all cores).

    python benchmarks/threads.py --out benchmarks/results/threads.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_costs import measure, median_round  # noqa: E402

from diffmas.engine import LM  # noqa: E402
from diffmas.models import load_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--length", type=int, default=150, help="cache length of the timed steps")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/threads.json")
    args = p.parse_args()
    cores = torch.get_num_threads()
    lm = LM(*load_model(args.model, dtype="bfloat16"), name=args.model)
    settings = sorted({1, cores})
    runs: dict[tuple[int, int], list[dict]] = {}
    for _ in range(args.rounds):
        for threads in settings:
            torch.set_num_threads(threads)
            for batch in args.batch_sizes:
                measure(lm, batch, 16, 2)  # warm the kernels of this thread count
                runs.setdefault((threads, batch), []).append(measure(lm, batch, args.length, args.steps))
    torch.set_num_threads(cores)
    rows = []
    print(f"{args.model}, bfloat16, cache length {args.length}, median of {args.rounds} rounds\n")
    print("| threads | batch | decode ms/step | decode tokens/s | latent ms/step | prefill tokens/s |")
    print("|---|---|---|---|---|---|")
    for (threads, batch), rs in sorted(runs.items()):
        row = {"threads": threads, **median_round(rs)}
        rows.append(row)
        print(f"| {threads} | {batch} | {row['decode_step_ms']:.1f} | {batch * 1000 / row['decode_step_ms']:.1f} | "
              f"{row['latent_step_ms']:.1f} | {row['prefill_tokens_per_s']:.0f} |")
    by = {(r["threads"], r["batch"]): r for r in rows}
    for batch in args.batch_sizes:
        if (1, batch) in by and (cores, batch) in by and cores > 1:
            ratio = by[(1, batch)]["decode_step_ms"] / by[(cores, batch)]["decode_step_ms"]
            print(f"batch {batch}: {cores} threads decode {ratio:.2f}x as fast as 1 thread")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "cores": cores, "length": args.length,
                                          "rounds": args.rounds, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
