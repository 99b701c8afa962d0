"""Does ``torch.compile`` pay for batch-1 decoding on CPU? The Hugging Face decoder, eager against
compiled (inductor, weight freezing, dynamic shapes), one token at a time on a DynamicCache.

    python benchmarks/compile_decoder.py

Prints the compile time and the milliseconds per token of each (the output head is applied
eagerly in both). Run it alone; the first compiled call takes minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch._inductor.config as inductor_config
from transformers import DynamicCache

from diffmas.models import load_model


def ms_per_token(model, decoder, ids: torch.Tensor, steps: int) -> float:
    cache = DynamicCache(config=model.config)
    decoder(input_ids=ids, past_key_values=cache, use_cache=True)
    nxt = torch.tensor([[5]])
    t0 = time.perf_counter()
    for _ in range(steps):
        out = decoder(input_ids=nxt, past_key_values=cache, use_cache=True)
        nxt = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
    return (time.perf_counter() - t0) / steps * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--length", type=int, default=150)
    p.add_argument("--steps", type=int, default=16)
    args = p.parse_args()
    model, _ = load_model(args.model, dtype="bfloat16", packed=False)
    inductor_config.freezing = True  # weights are constants: inductor may prepack them
    compiled = torch.compile(model.model, dynamic=True)
    ids = torch.tensor([[100 + i for i in range(args.length)]])
    with torch.inference_mode():
        print(f"eager: {ms_per_token(model, model.model, ids, args.steps):.1f} ms/token")
        t0 = time.perf_counter()
        first = ms_per_token(model, compiled, ids, 4)
        print(f"compiled: first calls {first:.0f} ms/token, {time.perf_counter() - t0:.0f} s with compilation")
        for _ in range(3):
            print(f"compiled: {ms_per_token(model, compiled, ids, args.steps):.1f} ms/token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
