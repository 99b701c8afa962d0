"""Where a method's time goes: every forward pass timed by kind (each agent's prompt, latent
steps, decoded tokens), with the real and the padded positions it computed.

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/phase_times.py --method latent_mas --n 32
    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/phase_times.py --method latent_mas --n 32 \
        --repeat-question

Runs `diffmas eval` on the last N problems (GSM8K train by default) with a timer around
:meth:`diffmas.engine.LM.forward_states`; "other" is what is left of the wall time (the output
head of decoding steps, tokenizing, bookkeeping). Run it alone: anything else running
changes it.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time

from diffmas.engine import LM
from diffmas.evaluate import EvalConfig, evaluate
from diffmas.models import load_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--split", default="train")
    p.add_argument("--method", default="latent_mas")
    p.add_argument("--n", type=int, default=32, help="the last N problems of the split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--by-length", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--repeat-question", action=argparse.BooleanOptionalAction, default=False)
    args = p.parse_args()

    seconds: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    real: dict[str, int] = collections.defaultdict(int)
    padded: dict[str, int] = collections.defaultdict(int)
    timed = LM.forward_states

    def forward_states(self, cache, agent, kind, new_real, **kw):
        started = time.perf_counter()
        out = timed(self, cache, agent, kind, new_real, **kw)
        key = f"prompt of {agent}" if kind == "prompt" else kind
        seconds[key] += time.perf_counter() - started
        calls[key] += 1
        real[key] += int(new_real.sum())
        padded[key] += new_real.numel()
        return out

    LM.forward_states = forward_states
    lm = LM(*load_model(args.model, dtype="bfloat16"), name=args.model)
    with tempfile.TemporaryDirectory() as out:
        cfg = EvalConfig(
            task=args.task,
            split=args.split,
            offset=-args.n,
            model=args.model,
            method=args.method,
            batch_size=args.batch_size,
            by_length=args.by_length,
            repeat_question=args.repeat_question,
            out=out,
        )
        started = time.perf_counter()
        summary = evaluate(cfg, lm=lm, progress=False)
        wall = time.perf_counter() - started
    print(
        f"{args.method} on the last {args.n} problems of {args.task}/{args.split}: {wall:.1f} s, accuracy "
        f"{100 * summary['accuracy']:.1f}%, {summary['mean_prompt_tokens']:.0f} prompt tokens and "
        f"{summary['mean_generated_tokens']:.1f} generated tokens per problem\n"
    )
    print("| forward passes | seconds | share | calls | real positions | pads |")
    print("|---|---|---|---|---|---|")
    for key in sorted(seconds):
        pads = padded[key] - real[key]
        print(
            f"| {key} | {seconds[key]:.2f} | {100 * seconds[key] / wall:.0f}% | {calls[key]} | {real[key]} | "
            f"{pads} ({100 * pads / padded[key]:.0f}%) |"
        )
    other = wall - sum(seconds.values())
    print(f"| other | {other:.2f} | {100 * other / wall:.0f}% | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
