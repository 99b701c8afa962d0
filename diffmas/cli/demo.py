"""``diffmas demo``: the main job. Evaluates every method on built-in problems with the default
offline model and prints one comparison table."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from diffmas.cli._common import quiet_transformers
from diffmas.evaluate import EvalConfig, evaluate
from diffmas.methods import METHODS
from diffmas.report import ratio_lines, summary_table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffmas demo", description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--task", default="synthetic-arith")
    parser.add_argument("--limit", type=int, default=16, help="problems per method (default: 16)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args(argv)
    quiet_transformers()
    base = EvalConfig(task=args.task, split="test", model=args.model, limit=args.limit,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, resume=True)
    methods = [name for name, cls in METHODS.items() if not cls.needs_adapter]  # trained ones need a run
    print(f"Evaluating {', '.join(methods)} on {args.limit} {args.task} problems with {args.model}.")
    print("On 2 CPU cores this takes about 10 minutes; finished methods are kept if you stop and rerun.")
    lm = base.load_lm()
    summaries = []
    for name in methods:
        cfg = replace(base, method=name, out=str(Path(args.out) / name))
        summaries.append(evaluate(cfg, lm=lm))
    print()
    print(summary_table(summaries))
    for line in ratio_lines(summaries):
        print(line)
    (Path(args.out) / "summary.json").write_text(json.dumps(summaries, indent=2))
    print(f"\nper-example records under {args.out}/<method>/records.jsonl")
    return 0
