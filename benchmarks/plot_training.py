"""Training curves of one or more `diffmas train` runs (loss per step, smoothed), as a PNG.

    python benchmarks/plot_training.py runs/train-gsm8k-qwen0.5b-diffmas runs/train-gsm8k-qwen0.5b-single_sft \
        --out docs/training_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--smooth", type=int, default=4, help="moving-average window (steps)")
    p.add_argument("--out", default="docs/training_curves.png")
    args = p.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in args.runs:
        log = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines() if line.strip()]
        steps = [r["step"] for r in log if "skipped" not in r]
        loss = [r["loss"] for r in log if "skipped" not in r]
        label = json.loads((Path(run) / "train_config.json").read_text())["method"]
        ax.plot(steps, loss, alpha=0.3)
        w = max(1, args.smooth)
        smooth = [sum(loss[max(0, i - w + 1) : i + 1]) / len(loss[max(0, i - w + 1) : i + 1]) for i in range(len(loss))]
        ax.plot(steps, smooth, label=f"{label} ({w}-step mean)", color=ax.lines[-1].get_color())
    ax.set_xlabel("optimizer step (16 GSM8K problems each)")
    ax.set_ylabel("teacher-forced cross-entropy of the reference")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
