"""How well the final agent reads a trace: its loss on known-good answers, by latent setting.

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/judger_nll.py \\
        --model qwen2.5-coder-1.5b-instruct --limit 8 --settings single hidden:0 hidden:1 hidden:10 soft:10

For each setting, the untrained system's final agent is teacher-forced on the kept texts of a
`diffmas collect` run (by default the 1.5B's own correct solutions committed with
experiments/teacher1.5b-qwen0.5b-dev) on top of the context that setting builds, and the mean
cross-entropy per target token is reported: the starting loss of a reader-trained judger on that
trace. A setting is ``single`` (one agent, the control's context) or ``INPUT:STEPS`` with INPUT
``hidden`` (the realigned last hidden state fed back, as LatentMAS) or ``soft`` (the expected input
embedding of the next token, ``--latent-input soft``) and STEPS latent steps per upstream agent
(four-agent sequential system). It costs forward passes only, so it screens latent settings before
any training or accuracy run. The JSON (``--out``) holds each example's loss beside the mean.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DEFAULT_COLLECT = "experiments/teacher1.5b-qwen0.5b-dev/results/collect-teacher1.5b"


def parse_setting(text: str) -> tuple[str, int]:
    """``single`` -> ("single", 0); ``soft:10`` -> ("soft", 10)."""
    if text == "single":
        return "single", 0
    kind, _, steps = text.partition(":")
    if kind not in ("hidden", "soft") or not steps.isdigit():
        raise SystemExit(f"a setting is single, hidden:STEPS or soft:STEPS, got {text!r}")
    return kind, int(steps)


def build(lm, task, setting: str, temperature: float):
    from diffmas.agents import load_system
    from diffmas.methods import LatentMAS, MethodConfig, SingleAgent

    kind, steps = parse_setting(setting)
    if kind == "single":
        return SingleAgent(lm, MethodConfig(), family=task.family, answer_format=task.answer_format)
    config = MethodConfig(latent_steps=steps, latent_input=kind, soft_temperature=temperature)
    return LatentMAS(
        lm, config, family=task.family, answer_format=task.answer_format, system=load_system(None, "sequential")
    )


def items_of(task, collect: Path, limit: int):
    """The first ``limit`` kept trajectories of a collect output (its attempts.jsonl), as TrainItems."""
    from diffmas.train.collect import kept_trajectories
    from diffmas.train.data import build_items, load_examples

    attempts = [json.loads(line) for line in (collect / "attempts.jsonl").read_text().splitlines() if line.strip()]
    kept, _ = kept_trajectories(attempts)
    examples, _ = load_examples(task, "train", None, exclude_last=1000)
    return build_items(task, examples, kept, "trajectory")[:limit]


def measure(method, items, batch: int) -> dict:
    from diffmas.train.objective import trajectory_loss

    started, per, total, tokens = time.perf_counter(), [], 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), batch):
            rows = items[i : i + batch]
            out = trajectory_loss(method, [r.question for r in rows], [r.target for r in rows])
            per += [round(float(v), 4) for v in out.per_example]
            total += float((out.per_example * out.tokens).sum())
            tokens += int(out.tokens.sum())
    return {"nll": total / tokens, "tokens": tokens, "per_example": per, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--collect", type=Path, default=Path(DEFAULT_COLLECT), help="a collect output with attempts.jsonl")
    p.add_argument("--limit", type=int, default=8, help="kept trajectories scored (the first ones)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--settings", nargs="+", default=["single", "hidden:0", "hidden:1", "hidden:10", "soft:10"])
    p.add_argument("--soft-temperature", type=float, default=1.0)
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: benchmarks/results/judger-nll-MODEL.json)"
    )
    args = p.parse_args(argv)
    for s in args.settings:
        parse_setting(s)  # refuse a bad setting before the model loads

    from diffmas.engine import LM
    from diffmas.models import load_model
    from diffmas.tasks import get_task

    model, tokenizer = load_model(args.model, dtype=args.dtype)
    lm = LM(model, tokenizer, name=args.model)
    task = get_task("gsm8k")
    items = items_of(task, args.collect, args.limit)
    rows = []
    for setting in args.settings:
        row = {"setting": setting, **measure(build(lm, task, setting, args.soft_temperature), items, args.batch)}
        rows.append(row)
        print(f"{setting:>10}  {row['nll']:.3f} nats / token  ({row['seconds']:.0f} s)", flush=True)
    out = args.out or Path("benchmarks/results") / f"judger-nll-{Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "dtype": args.dtype,
        "collect": str(args.collect),
        "examples": [it.id for it in items],
        "soft_temperature": args.soft_temperature,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
