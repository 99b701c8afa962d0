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
* ``plain`` (the anchor): Hugging Face + PEFT's own supervised loop on single_sft's prompts and
  targets: ``get_peft_model`` with the same LoRA, the model's own forward with ``labels``, AdamW.
  Same tokens as single_sft; its tokens per second (prompt + target) are printed beside it.

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

ROWS = ("plain", "single_sft", "full", "reader")


def timed_pass(trainer, steps: int) -> float:
    """Seconds for ``steps`` optimizer steps from the start of the data order."""
    trainer.stream.load_state_dict({**trainer.stream.state_dict(), "epoch": 0, "index": 0})
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if str(trainer.lm.device).startswith("cuda"):  # the step queues kernels: wait for them
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - started


def config(args: argparse.Namespace):
    from diffmas.train.config import TrainConfig

    return TrainConfig(
        model=args.model,
        device=args.device,
        method="single_sft" if args.row in ("single_sft", "plain") else "diffmas",
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


def measure(args: argparse.Namespace) -> dict:
    """One row, in this process."""
    from diffmas.train.trainer import Trainer

    if args.row == "plain":
        return measure_plain(args)
    trainer = Trainer(config(args), progress=False)
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
    if args.device.startswith("cuda"):
        import torch

        row["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    row["s_per_trajectory"] = (first + (args.epochs - 1) * later) / (args.epochs * n)
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def measure_plain(args: argparse.Namespace) -> dict:
    """The anchor row: single_sft's items and prompts, trained by PEFT and the model's own forward."""
    import torch
    from peft import LoraConfig, get_peft_model

    from diffmas.adapters import attention_projections
    from diffmas.engine import LM
    from diffmas.methods import SingleAgent
    from diffmas.models import load_model
    from diffmas.tasks import get_task
    from diffmas.train.collect import load_trajectories
    from diffmas.train.data import DataStream, build_items, load_examples
    from diffmas.train.objective import target_ids

    cfg = config(args)
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, packed=False, cpu_attention=False)
    lm = LM(model, tokenizer, name=cfg.model)
    task = get_task(cfg.task)
    examples, _ = load_examples(task, cfg.split, cfg.data_path, cfg.exclude_last, cfg.offset, cfg.limit, cfg.seed)
    trajectories = load_trajectories(cfg.trajectories) if cfg.trajectories else None
    items = build_items(task, examples, trajectories, cfg.target)
    prompts = SingleAgent(lm, family=task.family, answer_format=task.answer_format).build_prompts
    lora = cfg.lora()
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=0.0,
            target_modules=lora.target_modules or attention_projections(model),
        ),
    )
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr)
    stream = DataStream(len(items), cfg.seed)
    peft_model.train()

    def step(batch) -> int:
        seqs = [(p, target_ids(lm, t)) for p, t in zip(prompts([i.question for i in batch]), [i.target for i in batch])]
        width = max(len(p) + len(t) for p, t in seqs)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, (p, t) in enumerate(seqs):  # right-padded, the loss on the target only
            ids[r, : len(p) + len(t)] = torch.tensor(p + t)
            labels[r, len(p) : len(p) + len(t)] = torch.tensor(t)
            mask[r, : len(p) + len(t)] = 1
        loss = peft_model(
            input_ids=ids.to(cfg.device), attention_mask=mask.to(cfg.device), labels=labels.to(cfg.device)
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(mask.sum())

    def run(index: int, steps: int) -> tuple[float, int]:
        stream.load_state_dict({**stream.state_dict(), "epoch": 0, "index": index})
        started, tokens = time.perf_counter(), 0
        for _ in range(steps):
            tokens += step([items[i] for i in stream.take(cfg.batch_size)])
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started, tokens

    n = args.steps * args.batch_size
    run(n, 1)  # warm-up on trajectories outside the timed ones
    seconds, tokens = run(0, args.steps)
    return {
        "row": "plain",
        "trajectories": n,
        "first_pass_s": seconds / n,
        "s_per_trajectory": seconds / n,
        "tokens_per_s": tokens / seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        **({"peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30} if cfg.device.startswith("cuda") else {}),
    }


def print_table(rows: list[dict], epochs: int) -> None:
    base = next((r for r in rows if r["row"] == "single_sft"), None)
    plain = next((r for r in rows if r["row"] == "plain"), None)
    print(
        f"| row | s / trajectory ({epochs} passes) | vs single_sft | vs plain | first pass | later passes "
        f"| peak GB ({'GPU' if 'peak_gpu_gb' in rows[0] else 'resident'}) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['s_per_trajectory'] / base['s_per_trajectory']:.2f}x" if base else "-"
        vs_plain = f"{r['s_per_trajectory'] / plain['s_per_trajectory']:.2f}x" if plain else "-"
        later = f"{r['later_pass_s']:.2f}" if "later_pass_s" in r else "-"
        print(
            f"| {r['row']} | {r['s_per_trajectory']:.3f} | {ratio} | {vs_plain} | {r['first_pass_s']:.3f} | {later} | "
            f"{r.get('peak_gpu_gb', r['peak_rss_gb']):.1f} |"
        )
    if plain:
        print(f"plain: {plain['tokens_per_s']:.0f} tokens / s (prompt and target)")
    if reader := next((r for r in rows if r["row"] == "reader"), None):
        print(f"reader: {reader['trace_build_s']:.2f} s and {reader['mb_per_example']} MB per stored trace")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--device", default="cpu")
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
