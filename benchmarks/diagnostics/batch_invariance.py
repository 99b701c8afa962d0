"""Do greedy answers depend on the batch size? Runs the same problems at batch size 1 and at a
larger batch size with each method and counts identical outputs and identical extracted answers.

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/batch_invariance.py --n 16 --batch-size 16

In exact arithmetic the outputs are identical by construction (left padding, masks over pads,
real-token position ids). In bfloat16, matrix kernels may round differently for different batch
shapes, so a long greedy continuation can drift after a near-tie; the script reports how often.
With ``--batch-invariant`` (diffmas.kernels.exact) every row is computed bit for bit as in a batch
of one, and the outputs must all be identical:

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/batch_invariance.py --batch-invariant \
        --out benchmarks/results/batch-invariance-exact-qwen0.5b.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffmas.engine import LM
from diffmas.methods import MethodConfig, build_method
from diffmas.models import load_model
from diffmas.tasks import get_task


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=16, help="the last N problems of the split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=["single", "text_mas", "latent_mas"])
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--agent-max-new-tokens", type=int, default=64)
    p.add_argument("--batch-invariant", action="store_true", help="diffmas.kernels.exact: rows computed as alone")
    p.add_argument("--out", default="benchmarks/results/batch-invariance-bf16-qwen0.5b.json")
    args = p.parse_args()

    lm = LM(*load_model(args.model, dtype=args.dtype, batch_invariant=args.batch_invariant))
    task = get_task(args.task)
    examples = task.load(split=args.split, offset=-args.n).examples
    cfg = MethodConfig(max_new_tokens=args.max_new_tokens, agent_max_new_tokens=args.agent_max_new_tokens)
    results = {}
    for name in args.methods:
        method = build_method(name, lm, cfg, task)
        questions = [ex.question for ex in examples]
        with torch.inference_mode():
            t0 = time.perf_counter()
            batched = []
            for i in range(0, len(questions), args.batch_size):
                batched += method.run(questions[i : i + args.batch_size])
            t1 = time.perf_counter()
            single = [method.run([q])[0] for q in questions]
            t2 = time.perf_counter()
        same_text = sum(a.final_text == b.final_text for a, b in zip(batched, single))
        same_answer = sum(
            task.extract_answer(a.final_text) == task.extract_answer(b.final_text) for a, b in zip(batched, single)
        )
        results[name] = {
            "n": len(questions),
            "identical_outputs": same_text,
            "identical_answers": same_answer,
            f"seconds_batch_{args.batch_size}": t1 - t0,
            "seconds_batch_1": t2 - t1,
        }
        print(
            f"{name:>10}: identical outputs {same_text}/{len(questions)}, identical answers "
            f"{same_answer}/{len(questions)} (batch {args.batch_size}: {t1 - t0:.0f}s, batch 1: {t2 - t1:.0f}s)",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
