"""The speed report of a model on this machine, as ratios measured side by side in one run.

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/bench.py   # Qwen2.5-Coder-0.5B-Instruct, bf16 (training on GSM8K)
    python benchmarks/bench.py --model tiny --problems 4         # a smoke run on a random tiny model
    python benchmarks/bench.py --adapter diffmas=runs/train-x/final --skip-training

It measures, in one process:

1. the memory-copy bandwidth of this machine (a large tensor copy, best of several);
2. decode tokens/s at batch 1, 8 and 16, and at batch 1 the share of the bandwidth bound (bytes of
   weights read per token divided by the copy bandwidth);
3. one latent step against one decode step at the same cache length, and prefill tokens/s
   (benchmarks/step_costs.py);
4. time and generated tokens per problem of single, text_mas, latent_mas (and diffmas when an
   adapter is given) on the same problems (benchmarks/gsm8k_methods.py does the long version);
5. training trajectories/s at the default batch size against the brief's naive batch-1 loop on the
   same trajectories (benchmarks/train_throughput.py, each in a child process so that its memory is
   its own), unless --skip-training.

It writes JSON and prints a table. Run it alone: anything else running changes it.
Targets of the performance issue are printed beside the measurements; they are never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_costs import measure as step_costs  # noqa: E402

from diffmas.engine import LM  # noqa: E402
from diffmas.evaluate import EvalConfig, evaluate  # noqa: E402
from diffmas.models import build_tiny_model, load_model  # noqa: E402


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write counted once each, as a decode step
    reads the weights once); the best of ``repeats``."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() / best


def weight_bytes_per_token(lm: LM) -> int:
    """Bytes of weights a decode step reads: every parameter except the input embedding table,
    of which one row per token is read (tied embeddings are read once, as the output head)."""
    params = {id(p): p for p in lm.model.parameters()}
    embed = lm.model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in params.values())
    if embed is not lm.head.weight:
        total -= embed.numel() * embed.element_size()
    return total


def decode_rate(lm: LM, batch: int, steps: int, context: int = 64) -> float:
    row = step_costs(lm, batch, context, steps)
    return batch * 1000 / row["decode_step_ms"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="a model name, or 'tiny'")
    p.add_argument("--task", default="synthetic-arith")
    p.add_argument("--problems", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=16, help="decode / latent steps timed per measurement")
    p.add_argument("--adapter", nargs="*", default=[], metavar="METHOD=DIR")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--out", default="benchmarks/results/speed-report-qwen0.5b.json")
    args = p.parse_args()
    tiny = args.model == "tiny"
    lm = (
        LM(*build_tiny_model("qwen2", seed=0), name="tiny")
        if tiny
        else LM(*load_model(args.model, dtype="bfloat16"), name=args.model)
    )
    report: dict = {"model": lm.name, "threads": torch.get_num_threads(), "torch": torch.__version__}
    step_costs(lm, 1, 16, 3)  # warm-up

    bandwidth = copy_bandwidth()
    per_token = weight_bytes_per_token(lm)
    rates = {b: decode_rate(lm, b, args.steps) for b in (1, 8, 16)}
    bound = bandwidth / per_token
    report["bandwidth"] = {
        "copy_bytes_per_s": bandwidth,
        "weight_bytes_per_token": per_token,
        "bound_tokens_per_s": bound,
        "decode_tokens_per_s": rates,
        "batch1_share_of_bound": rates[1] / bound,
    }
    report["steps"] = [step_costs(lm, b, n, args.steps) for b in (1, 8) for n in (150, 700)]

    adapters = dict(item.split("=", 1) for item in args.adapter)
    methods = ["single", "text_mas", "latent_mas", *adapters]
    model_arg = "tiny" if tiny else args.model
    base = EvalConfig(
        task=args.task,
        split="test",
        model=model_arg,
        limit=args.problems,
        batch_size=args.batch_size,
        topology="sequential",
        out="/tmp/diffmas-bench",
    )
    summaries = []
    for method in methods:
        run_lm = lm if method not in adapters else LM(*load_model(args.model, dtype="bfloat16"), name=args.model)
        cfg = replace(
            base,
            method=method,
            adapter=adapters.get(method),
            out=f"/tmp/diffmas-bench-{time.time_ns()}",
            topology=None if method in adapters else "sequential",
        )
        summaries.append(evaluate(cfg, lm=run_lm, progress=False))
    report["methods"] = {
        s["method"]: {k: s[k] for k in ("accuracy", "mean_generated_tokens", "mean_seconds", "mean_prompt_tokens")}
        for s in summaries
    }
    if not args.skip_training and not tiny:
        # The trainer's defaults against the brief's naive loop (batch 1, F.linear, fused attention,
        # PEFT's float32 LoRA products), timed on the same trajectories in this run.
        proc = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).parent / "train_throughput.py"),
                "--model",
                args.model,
                "--steps",
                "1",
                "--naive-row",
                "--no-checkpointing-row",
                "--repeat-question",
                "off",
                "--out",
                "/tmp/diffmas-bench-train.json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        report["training"] = (
            json.loads(Path("/tmp/diffmas-bench-train.json").read_text())
            if proc.returncode == 0
            else {"error": proc.stderr[-1000:]}
        )
    print_report(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


def print_report(report: dict) -> None:
    bw = report["bandwidth"]
    print(f"\n{report['model']}, {report['threads']} threads, torch {report['torch']}")
    print(
        f"copy bandwidth {bw['copy_bytes_per_s'] / 1e9:.1f} GB/s; {bw['weight_bytes_per_token'] / 1e6:.0f} MB of "
        f"weights per token -> bound {bw['bound_tokens_per_s']:.1f} tokens/s at batch 1"
    )
    print(
        "decode tokens/s: "
        + ", ".join(f"batch {b}: {r:.1f}" for b, r in bw["decode_tokens_per_s"].items())
        + f"; batch 1 is {100 * bw['batch1_share_of_bound']:.0f}% of the bound (target >= 70%)"
    )
    print(
        "\n| batch | cache length | prefill tok/s | latent step ms | decode step ms | latent/decode (target <= 0.8) |"
    )
    print("|---|---|---|---|---|---|")
    for r in report["steps"]:
        print(
            f"| {r['batch']} | {r['length']} | {r['prefill_tokens_per_s']:.0f} | {r['latent_step_ms']:.1f} | "
            f"{r['decode_step_ms']:.1f} | {r['latent_over_decode']:.2f} |"
        )
    print("\n| method | accuracy | gen tokens/problem | s/problem |\n|---|---|---|---|")
    for name, m in report["methods"].items():
        print(f"| {name} | {100 * m['accuracy']:.1f}% | {m['mean_generated_tokens']:.1f} | {m['mean_seconds']:.2f} |")
    ms = report["methods"]
    if "latent_mas" in ms and "text_mas" in ms and ms["latent_mas"]["mean_seconds"]:
        speed = ms["text_mas"]["mean_seconds"] / ms["latent_mas"]["mean_seconds"]
        fewer = 1 - ms["latent_mas"]["mean_generated_tokens"] / max(ms["text_mas"]["mean_generated_tokens"], 1e-9)
        print(
            f"latent_mas vs text_mas: {speed:.2f}x faster (target >= 5x), {100 * fewer:.1f}% fewer tokens "
            f"(target >= 85%), accuracy {100 * ms['latent_mas']['accuracy']:.1f}% against "
            f"{100 * ms['text_mas']['accuracy']:.1f}% (target: equal or better)"
        )
    if "error" in report.get("training", {}):
        print(
            "training throughput was not measured; benchmarks/train_throughput.py failed with:\n"
            + report["training"]["error"].strip().splitlines()[-1]
        )
    if "training" in report:
        rows = report["training"].get("rows", [])
        naive = next((r for r in rows if r["batch_size"] == 1 and not r["packed"]), None)
        for r in rows:
            what = (
                "the naive loop"
                if r is naive
                else f"the trainer, batch {r['batch_size']}, checkpointing {r['gradient_checkpointing']}"
            )
            versus = (
                ""
                if r is naive or not r.get("speedup_vs_naive")
                else f", {r['speedup_vs_naive']:.2f}x the naive loop on the same trajectories (target >= 2x)"
            )
            print(f"training, {what}: {r['s_per_trajectory']:.2f} s/trajectory{versus}")


if __name__ == "__main__":
    sys.exit(main())
