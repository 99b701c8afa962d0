"""What untrained latent steps do to the text that follows them, on one question.

    python benchmarks/diagnostics/latent_probe.py --model qwen2.5-coder-1.5b-instruct --steps 0 1 3 10

A planner prefills its prompt and runs k latent steps (the realigned hidden state fed back, as
latent_mas does); a judger then prefills its own prompt on top and decodes greedily. For each k it
prints the logit-lens readout of every latent vector (the top token of the hidden state it was
made from) and the start of the judger's text, so one sees at which k the text stops reading as
an answer. A probe of one question, for looking, not an accuracy figure (benchmarks/gsm8k_methods.py
measures that).
"""

from __future__ import annotations

import argparse

import torch

from diffmas.decoding import decode  # noqa: E402
from diffmas.engine import LM
from diffmas.latent import Realigner, run_latent_steps
from diffmas.models import load_model

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?"
)
PLANNER = "You are the Planner. Write a step-by-step plan for the question.\n\nQuestion: {question}"
JUDGER = "You are the Judger. Solve the question step by step. Put the final numerical answer in \\boxed{}."


def probe(lm: LM, question: str, steps: int, tokens: int) -> tuple[list[str], str]:
    """(the readout of each latent vector, the judger's text) after ``steps`` latent steps."""
    planner = lm.chat_ids([{"role": "user", "content": PLANNER.format(question=question)}])
    judger = lm.chat_ids([{"role": "user", "content": JUDGER}])
    with torch.inference_mode():
        cache = lm.new_cache(1)
        hidden = lm.prefill(cache, "planner", [planner])
        _, readouts = run_latent_steps(lm, cache, "planner", hidden, steps, Realigner.for_lm(lm), readout_k=1)
        hidden = lm.prefill(cache, "judger", [judger])
        ids = decode(lm, cache, "judger", hidden, tokens)[0]
    return [top[0] for top in readouts[0]], lm.decode_text(ids)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 1, 3, 10])
    p.add_argument("--tokens", type=int, default=40, help="judger tokens decoded per probe")
    p.add_argument("--question", default=QUESTION)
    args = p.parse_args(argv)
    lm = LM(*load_model(args.model, dtype="bfloat16"), name=args.model)
    for k in args.steps:
        readout, text = probe(lm, args.question, k, args.tokens)
        print(f"{k:3d} latent steps | readout: {readout}\n    judger: {text[:160]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
