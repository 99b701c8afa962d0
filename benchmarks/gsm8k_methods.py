"""Accuracy, generated tokens and wall time of single, text_mas and latent_mas on GSM8K.

Default: Qwen2.5-Coder-0.5B-Instruct, greedy, the last 100 problems of GSM8K train (which every
training run holds out), all methods in one process so the speed ratios are measured side by side.

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/gsm8k_methods.py --out benchmarks/results/gsm8k-last100-qwen0.5b

Targets (issue 2): latent_mas at least 4x faster than text_mas with at least 75% fewer generated
tokens. The script prints both ratios and writes them to <out>/benchmark.json.

Methods take turns of ``--turn`` problems (default 48: single, text_mas, latent_mas on problems
1-48, then on 49-96, ...), so that whatever else the machine is doing slows every method alike;
the ratios compare the methods' own per-problem seconds. Within a turn batches overlap
(continuous batching, ``--refill``); a turn ends with its last answers decoding alone, so
longer turns favour the methods with long-tailed answer lengths a little more.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from diffmas.engine import LM
from diffmas.evaluate import EvalConfig, evaluate
from diffmas.models import load_model
from diffmas.report import ratio_lines, summary_table, warnings

SYSTEMS = Path(__file__).resolve().parents[1] / "configs" / "systems"

# Settings a method can be run with beside its default, named "METHOD/VARIANT" in --methods.
# The latent designs (steps*, norealign, hier, duo, asked) are the experiments of docs/results.md,
# "GSM8K's last 100: the untrained latent system".
VARIANTS = {
    "once": {"repeat_question": False},
    "repeat": {"repeat_question": True},
    "unsorted": {"by_length": False},
    "bare": {"answer_cue": False},
    "steps0": {"latent_steps": 0},
    "steps3": {"latent_steps": 3},
    "steps5": {"latent_steps": 5},
    "steps20": {"latent_steps": 20},
    "steps40": {"latent_steps": 40},
    "norealign": {"realign": False},
    "hier": {"topology": "hierarchical"},
    "duo": {"system": str(SYSTEMS / "planner-solver.yaml")},
    "asked": {"system": str(SYSTEMS / "judger-asked.yaml")},
}


def split_variant(label: str) -> tuple[str, dict]:
    name, _, variant = label.partition("/")
    if variant and variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r} in {label!r}; known: {', '.join(VARIANTS)}")
    return name, VARIANTS.get(variant, {})


def run_dir(out: str, label: str) -> Path:
    """Where a method (or METHOD/VARIANT) writes its records: <out>/METHOD or <out>/METHOD-VARIANT."""
    return Path(out) / label.replace("/", "-")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--split", default="train")
    p.add_argument("--last", type=int, default=100, help="evaluate the last N problems of the split")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["single", "text_mas", "latent_mas"],
        help="methods; METHOD/VARIANT runs one with other settings: latent_mas/once is latent_mas "
        "with --no-repeat-question, latent_mas/repeat with --repeat-question, METHOD/unsorted with "
        "--no-by-length; latent designs: latent_mas/steps0 (3, 5, 20, 40): that many latent steps, "
        "/norealign: no realignment, /hier: the hierarchical system, /duo: "
        "configs/systems/planner-solver.yaml, /asked: configs/systems/judger-asked.yaml",
    )
    p.add_argument("--topology", default="sequential")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--turn", type=int, default=48, help="problems each method answers before the next one's turn")
    p.add_argument("--refill", type=float, default=0.25, help="continuous batching (0: off), see diffmas eval")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--agent-max-new-tokens", type=int, default=256)
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument(
        "--stop-loops",
        type=int,
        default=0,
        help="stop a text once its last N tokens are a loop (diffmas eval --stop-loops); 0: off",
    )
    p.add_argument(
        "--by-length",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="batch each turn's problems longest question first (diffmas eval --by-length)",
    )
    p.add_argument("--out", default="benchmarks/results/gsm8k-last100-qwen0.5b")
    p.add_argument("--resume", action="store_true", help="keep finished records of an earlier run")
    p.add_argument(
        "--adapter",
        nargs="+",
        default=[],
        metavar="METHOD=DIR",
        help="trained adapters of diffmas / single_sft, e.g. diffmas=runs/train-x/final",
    )
    args = p.parse_args()
    adapters = dict(item.split("=", 1) for item in args.adapter)

    t0 = time.perf_counter()
    lm = LM(*load_model(args.model, dtype="bfloat16"), name=args.model)
    load_seconds = time.perf_counter() - t0
    # Trained adapters attach to a model: each trained method gets its own copy.
    lms = {
        m: LM(*load_model(args.model, dtype="bfloat16"), name=args.model) if m in adapters else lm for m in args.methods
    }
    base = EvalConfig(
        task=args.task,
        split=args.split,
        offset=-args.last,
        model=args.model,
        topology=args.topology,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        agent_max_new_tokens=args.agent_max_new_tokens,
        latent_steps=args.latent_steps,
        refill=args.refill,
        stop_loops=args.stop_loops,
        by_length=args.by_length,
    )
    if not args.resume:
        for method in args.methods:
            shutil.rmtree(run_dir(args.out, method), ignore_errors=True)
    summaries: list[dict] = []
    for end in range(args.turn, args.last + args.turn, args.turn):
        # resume=True: each call adds the next turn's problems to the method's records.
        summaries = []
        for m in args.methods:
            name, variant = split_variant(m)
            settings = {"topology": None if m in adapters else args.topology, **variant}
            summary = evaluate(
                replace(
                    base,
                    method=name,
                    out=str(run_dir(args.out, m)),
                    limit=min(end, args.last),
                    adapter=adapters.get(m),
                    resume=True,
                    **settings,
                ),
                lm=lms[m],
                progress=False,
            )
            summaries.append({**summary, "method": m})  # the variant's label in the tables and ratios
        print(f"-- {min(end, args.last)}/{args.last} problems\n{summary_table(summaries)}", flush=True)

    print("\n" + summary_table(summaries))
    ratios = [
        line for m in args.methods if split_variant(m)[0] == "latent_mas" for line in ratio_lines(summaries, fast=m)
    ]
    for line in ratios:
        print(line)
    flags = [w for s in summaries for w in warnings(s)]
    for line in flags:
        print(f"warning: {line}")
    report = {
        "summaries": summaries,
        "ratios": ratios,
        "warnings": flags,
        "model_load_seconds": load_seconds,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "command": "python benchmarks/gsm8k_methods.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if not isinstance(v, bool) and v != []
        ),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "benchmark.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
