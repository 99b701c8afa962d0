"""Evaluation throughput, side by side in one run: Hugging Face ``generate`` on the single agent's
own prompts (the anchor) against diffmas's ``single``, and ``latent_mas`` against ``text_mas``,
per problem and per generated token, on the same problems, batch size and budgets.

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/eval_throughput.py --device cuda --batch-size 64
    python benchmarks/eval_throughput.py --model DIR --task synthetic-arith --problems 8 --batch-size 4

Each row first answers one untimed batch (allocator, kernels, first-call costs), then all
``--problems``; its time includes every host-device wait (the device is synchronised around it).
``generate`` answers in fixed batches of ``--batch-size`` in problem order, left-padded, greedy,
stopping at the model's turn end; the diffmas rows answer through ``diffmas.pipeline`` as
``diffmas eval`` does (continuous batching, ``--refill``), with no answer cue so that every row
writes only its budgeted tokens. ``same_as_generate`` is the share of problems whose ``single``
text equals ``generate``'s (greedy on the same prompts; bfloat16 batches of different shapes may
differ in rounding). On a model with random weights (benchmarks/random_model.py) every row decodes
its whole budget: compare per token there. Targets are printed beside the measurements; they are
never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROWS = ("generate", "single", "latent_mas", "text_mas")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generate_row(system, questions: list[str], batch: int, max_new_tokens: int) -> tuple[list[str], int]:
    """Hugging Face generate over ``questions`` in batches: (texts, generated tokens)."""
    lm = system.lm
    tok, model = lm.tokenizer, lm.model
    stops = lm.stop_ids.tolist()  # the turn ends diffmas's own decoding stops at
    pad = lm.pad_id
    prompts = system.method.build_prompts(questions)
    texts, generated = [], 0
    for start in range(0, len(prompts), batch):
        rows = prompts[start : start + batch]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=lm.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=lm.device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad,
        )
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in stops), len(row))
            generated += min(end + 1, len(row))  # the stop token counted, as diffmas's traces do
            texts.append(tok.decode(row[:end], skip_special_tokens=True))
    return texts, generated


def diffmas_row(system, examples) -> tuple[list[str], int]:
    answers = system(examples)
    return [a.text for a in answers], sum(a.trace.generated_tokens for a in answers)


def measure(lm, args: argparse.Namespace, examples) -> list[dict]:
    from diffmas import pipeline

    settings = dict(
        task=args.task,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        agent_max_new_tokens=args.agent_max_new_tokens,
        latent_steps=args.latent_steps,
        answer_cue=False,
        refill=args.refill,
    )
    questions = [ex.question for ex in examples]
    rows, texts = [], {}
    for name in args.rows:
        system = pipeline("single" if name == "generate" else name, model=lm, **settings)

        def run(items, system=system, name=name):
            with torch.inference_mode():
                if name == "generate":
                    return generate_row(system, [ex.question for ex in items], args.batch_size, args.max_new_tokens)
                return diffmas_row(system, items)

        run(examples[: args.batch_size])  # warm-up, untimed
        sync(args.device)
        started = time.perf_counter()
        texts[name], tokens = run(examples)
        sync(args.device)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "row": name,
                "problems": len(questions),
                "seconds": seconds,
                "s_per_problem": seconds / len(questions),
                "generated_tokens": tokens,
                "tokens_per_s": tokens / seconds,
            }
        )
        print(
            f"{name}: {seconds / len(questions):.4f} s/problem, {tokens / seconds:.1f} generated tokens/s", flush=True
        )
    if "generate" in texts and "single" in texts:
        same = sum(a == b for a, b in zip(texts["generate"], texts["single"]))
        for r in rows:
            if r["row"] == "single":
                r["same_as_generate"] = same / len(questions)
    return rows


def summary(rows: list[dict]) -> dict:
    by = {r["row"]: r for r in rows}
    out = {}
    if "generate" in by and "single" in by:
        out["single_speedup_vs_generate"] = by["generate"]["s_per_problem"] / by["single"]["s_per_problem"]
        out["single_token_rate_vs_generate"] = by["single"]["tokens_per_s"] / by["generate"]["tokens_per_s"]
    if "latent_mas" in by and "text_mas" in by:
        out["latent_mas_speedup_vs_text_mas"] = by["text_mas"]["s_per_problem"] / by["latent_mas"]["s_per_problem"]
    return out


def print_table(rows: list[dict], ratios: dict) -> None:
    print("| row | problems | s/problem | generated tokens | tokens/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['row']} | {r['problems']} | {r['s_per_problem']:.4f} | {r['generated_tokens']} | {r['tokens_per_s']:.1f} |"
        )
    targets = {
        "single_speedup_vs_generate": "target >= 1.0 (single at least as fast as generate)",
        "single_token_rate_vs_generate": "",
        "latent_mas_speedup_vs_text_mas": "target >= 5.0 on the GPU",
    }
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x  {targets[key]}".rstrip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="a registry name or a model directory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--split", default="train")
    p.add_argument("--offset", type=int, default=-500)
    p.add_argument("--problems", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--refill", type=float, default=0.25)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--agent-max-new-tokens", type=int, default=128)
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--out", default="benchmarks/results/eval-throughput.json")
    args = p.parse_args(argv)

    from diffmas import load
    from diffmas.tasks import get_task

    lm = load(args.model, dtype=args.dtype, device=args.device)
    task = get_task(args.task)
    offset = args.offset if task.name != "synthetic-arith" else None
    examples = task.load(split=args.split, limit=args.problems, offset=offset).examples
    if len(examples) < args.problems:
        raise SystemExit(
            f"{args.task} {args.split} has {len(examples)} problems at offset {offset}, not {args.problems}"
        )
    rows = measure(lm, args, examples)
    ratios = summary(rows)
    print_table(rows, ratios)
    result = {
        "command": "python benchmarks/eval_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "dtype": args.dtype,
        "settings": {
            k: getattr(args, k)
            for k in ("batch_size", "refill", "max_new_tokens", "agent_max_new_tokens", "latent_steps")
        },
        "rows": rows,
        **ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
