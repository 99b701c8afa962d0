"""Which dtype is fast on this CPU: prefill and decode of one model in bfloat16 and float32, with
and without the packed (oneDNN-prepacked) linear layers, side by side in one run.

    python benchmarks/cpu_dtype.py [--model qwen2.5-coder-0.5b-instruct] [--batch 8] [--steps 16]

bfloat16 is fast only where the CPU multiplies it natively (AVX512-BF16 or AMX); elsewhere oneDNN
and PyTorch convert it, and float32 wins. The JSON names the CPU and its bfloat16 capabilities
beside each time (``benchmarks/results/cpu-dtype-<cpu>.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diffmas.decoding import decode_rows
from diffmas.engine import ModelConfig
from diffmas.methods import MethodConfig, SingleAgent
from diffmas.models.loading import cpu_bfloat16_native

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def measure(model: str, dtype: str, packed: bool, batch: int, steps: int) -> dict:
    lm = ModelConfig(model=model, dtype=dtype, packed=packed).load_lm()
    method = SingleAgent(lm, MethodConfig(max_new_tokens=steps, min_new_tokens=steps))
    with torch.inference_mode():
        method.prepare([QUESTION])  # warm-up: kernels, allocator
        t0 = time.perf_counter()
        p = method.prepare([QUESTION] * batch)
        t1 = time.perf_counter()
        decode_rows(lm, p.cache, p.agent, p.last_hidden, steps, p.sampling)
        t2 = time.perf_counter()
    prompt = len(method.build_prompts([QUESTION])[0])
    return {
        "dtype": dtype,
        "packed": packed,
        "prefill_s": round(t1 - t0, 3),
        "prefill_tokens": prompt * batch,
        "decode_step_s": round((t2 - t1) / steps, 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    cpu = {
        "name": caps.get("cpu_name", platform.processor()),
        "cores": torch.get_num_threads(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": bool(caps.get("avx512_bf16")),
        "amx_bf16": bool(caps.get("amx_bf16")),
        "bfloat16_native": cpu_bfloat16_native(),
    }
    rows = []
    for dtype in ("float32", "bfloat16"):
        for packed in (True, False):
            rows.append(measure(args.model, dtype, packed, args.batch, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for r in rows:
        r["prefill_vs_float32_packed"] = round(r["prefill_s"] / base["prefill_s"], 2)
        r["decode_vs_float32_packed"] = round(r["decode_step_s"] / base["decode_step_s"], 2)
    result = {"model": args.model, "batch": args.batch, "steps": args.steps, "cpu": cpu, "rows": rows}
    print(f"CPU {cpu['name']} ({cpu['capability']}; native bfloat16: {cpu['bfloat16_native']})")
    print(f"{'dtype':9s} {'packed':6s} {'prefill s':>9s} {'x':>6s} {'decode s/step':>13s} {'x':>6s}")
    for r in rows:
        print(
            f"{r['dtype']:9s} {r['packed']!s:6s} {r['prefill_s']:9.2f} {r['prefill_vs_float32_packed']:6.2f} "
            f"{r['decode_step_s']:13.3f} {r['decode_vs_float32_packed']:6.2f}"
        )
    slug = "native-bf16" if cpu["bfloat16_native"] else cpu["capability"].lower()
    out = args.out or Path("benchmarks/results") / f"cpu-dtype-{slug}-{args.model.split('-instruct')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
