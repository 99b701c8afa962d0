"""What a training step costs: reader training on stored upstream traces, full-gradient DiffMAS and
the single_sft control, on the same trajectories and targets, side by side in one run.

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/reader_cost.py                       # 0.5B, GSM8K
    python benchmarks/reader_cost.py --model DIR --task synthetic-arith --steps 1 --batch-size 2

Rows (each in its own process, so that its peak resident memory is its own):

* ``single_sft``: one agent, one LoRA, the question's prompt, the target teacher-forced.
* ``diffmas full``: the whole trajectory with gradients (``grad_through: full``).
* ``diffmas reader``: ``grad_through: none`` with the trace store (diffmas.train.traces): the
  first pass over the trajectories builds and stores their upstream traces, later passes read them.
  Its cost is given per pass (first, later) and amortised over ``--epochs`` passes:
  (first + (epochs - 1) x later) / epochs.

Every row first runs one untimed warm-up step on trajectories outside the timed ones, then
``--steps`` optimizer steps of ``--batch-size`` trajectories (the first ``steps x batch size`` of
the seeded data order). Ratios are against single_sft. Run it alone: anything else running changes it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ("single_sft", "full", "reader")


def timed_pass(trainer, steps: int) -> float:
    """Seconds for ``steps`` optimizer steps from the start of the data order."""
    trainer.stream.load_state_dict({**trainer.stream.state_dict(), "epoch": 0, "index": 0})
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> dict:
    """One row, in this process."""
    from diffmas.train.config import TrainConfig
    from diffmas.train.trainer import Trainer

    cfg = TrainConfig(
        model=args.model,
        method="single_sft" if args.row == "single_sft" else "diffmas",
        grad_through="none" if args.row == "reader" else "full",
        task=args.task,
        split="train",
        exclude_last=args.exclude_last,
        latent_steps=args.latent_steps,
        lora_dropout=0.0,
        batch_size=args.batch_size,
        max_steps=args.steps + 2,
        trajectories=args.trajectories,
        target="trajectory" if args.trajectories else "reference",
        trace_dir=args.trace_dir,
        out=args.scratch,
    )
    trainer = Trainer(cfg, progress=False)
    trainer.lm.model.train()
    n = args.steps * args.batch_size
    trainer.stream.load_state_dict({**trainer.stream.state_dict(), "epoch": 0, "index": n})
    trainer.train_step()  # warm-up on trajectories outside the timed ones
    first = timed_pass(trainer, args.steps)
    row = {"row": args.row, "trajectories": n, "first_pass_s": first / n}
    if args.row == "reader":
        traces = trainer.traces.summary()
        later = timed_pass(trainer, args.steps)
        row |= {
            "later_pass_s": later / n,
            "trace_build_s": traces["build_seconds"] / traces["built"],
            "mb_per_example": traces["mb_per_example"],
        }
    else:
        later = first
    row["s_per_trajectory"] = (first + (args.epochs - 1) * later) / (args.epochs * n)
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def print_table(rows: list[dict], epochs: int) -> None:
    base = next((r for r in rows if r["row"] == "single_sft"), None)
    print(f"| row | s / trajectory ({epochs} passes) | vs single_sft | first pass | later passes | peak GB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['s_per_trajectory'] / base['s_per_trajectory']:.2f}x" if base else "-"
        later = f"{r['later_pass_s']:.2f}" if "later_pass_s" in r else "-"
        print(
            f"| {r['row']} | {r['s_per_trajectory']:.2f} | {ratio} | {r['first_pass_s']:.2f} | {later} | "
            f"{r['peak_rss_gb']:.1f} |"
        )
    if reader := next((r for r in rows if r["row"] == "reader"), None):
        print(f"reader: {reader['trace_build_s']:.2f} s and {reader['mb_per_example']} MB per stored trace")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--task", default="gsm8k")
    p.add_argument(
        "--exclude-last", type=int, default=1000, help="problems held out of training (the dev and final sets)"
    )
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per pass")
    p.add_argument("--batch-size", type=int, default=4, help="trajectories per optimizer step")
    p.add_argument("--epochs", type=int, default=3, help="passes the reader's first-pass cost is amortised over")
    p.add_argument("--trajectories", default=None, help="a `diffmas collect` output: its kept texts as targets")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--out", default="benchmarks/results/reader-cost-qwen0.5b.json")
    p.add_argument("--row", choices=ROWS, help=argparse.SUPPRESS)  # one row, in this process
    p.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    p.add_argument("--trace-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.row:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffmas-reader-cost-") as tmp:
        for row in args.rows:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--row", row, "--scratch", f"{tmp}/{row}"]
            cmd += ["--trace-dir", f"{tmp}/traces"]  # empty at the start: the first pass builds every trace
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stderr)
                return done.returncode
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{row}: {rows[-1]['s_per_trajectory']:.2f} s / trajectory", flush=True)
    print_table(rows, args.epochs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
