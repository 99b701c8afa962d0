"""The main job (``diffmas demo``): train DiffMAS briefly and compare it with every other method.

On the offline default model and built-in data: train ``diffmas`` (a LoRA per agent and the
communication map, end to end) and its control ``single_sft`` (one agent, the same LoRA budget,
data, steps and schedule), then evaluate ``single``, ``single_sft``, ``text_mas``, ``latent_mas``
and ``diffmas`` on held-out problems, print one table and plot accuracy against generated tokens
and time. Every stage is resumable: rerunning the same command skips finished work.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, replace
from pathlib import Path

from diffmas import checkpoint as ckpt
from diffmas.config import option, redefault
from diffmas.engine import ModelConfig
from diffmas.errors import DiffMASError
from diffmas.evaluate import EvalConfig, evaluate
from diffmas.options import TaskOptions
from diffmas.report import plot_accuracy, ratio_lines, summary_table

METHODS = ("single", "single_sft", "text_mas", "latent_mas", "diffmas")
# The demo's own costs on the reference machine (2 CPU cores, Qwen2.5-Coder-0.5B-Instruct in
# bfloat16), for its up-front time estimate only: seconds per evaluated problem for each method,
# per training trajectory, and for the model loads.
SECONDS_PER_PROBLEM = {"single": 4.1, "single_sft": 4.3, "text_mas": 16.2, "latent_mas": 3.1, "diffmas": 3.0}
SECONDS_PER_TRAJECTORY = {"diffmas": 4.9, "single_sft": 1.7}
SECONDS_OVERHEAD = 60.0


@dataclass
class DemoConfig(ModelConfig, TaskOptions):
    task: str = redefault(
        TaskOptions, "task", "synthetic-arith", "task: trained on its train split, evaluated on its test split"
    )
    limit: int = option(16, "held-out problems evaluated per method")
    train_problems: int = option(32, "training problems (the same for diffmas and single_sft)")
    train_steps: int = option(8, "optimizer steps of each training run")
    train_batch_size: int = option(4, "trajectories per optimizer step")
    lr: float = option(5e-4, "peak learning rate of the LoRA adapters")
    latent_steps: int = option(10, "latent steps per upstream agent (latent_mas and diffmas, trained and run)")
    batch_size: int = option(8, "problems per evaluation batch")
    max_new_tokens: int = option(384, "answer budget of the final agent")
    seed: int = option(0, "seed of training")
    out: str = option("runs/demo", "output directory (rerun to resume)")

    def __post_init__(self) -> None:
        for name in ("limit", "train_problems", "train_steps", "train_batch_size", "batch_size"):
            if getattr(self, name) < 1:
                raise DiffMASError(f"{name} must be at least 1, got {getattr(self, name)}")

    def estimate_minutes(self) -> float:
        trained = self.train_steps * self.train_batch_size * sum(SECONDS_PER_TRAJECTORY.values())
        evaluated = self.limit * sum(SECONDS_PER_PROBLEM.values())
        return (trained + evaluated + SECONDS_OVERHEAD) / 60


def train_config(cfg: DemoConfig, method: str):
    from diffmas.train.config import TrainConfig

    return TrainConfig(
        model=cfg.model,
        dtype=cfg.dtype,
        device=cfg.device,
        cache_dir=cfg.cache_dir,
        method=method,
        task=cfg.task,
        split="train",
        limit=cfg.train_problems,
        topology="sequential",
        latent_steps=cfg.latent_steps,
        lora_dropout=0.0,
        lr=cfg.lr,
        comm_lr=cfg.lr / 4,
        warmup_steps=1,
        batch_size=cfg.train_batch_size,
        grad_accum=1,
        max_steps=cfg.train_steps,
        seed=cfg.seed,
        save_every=max(1, cfg.train_steps // 2),
        resume=True,
        out=str(Path(cfg.out) / f"train-{method}"),
    )


def train_once(cfg: DemoConfig, method: str) -> Path:
    """Train ``method`` unless a finished run is already there; returns its final checkpoint."""
    from diffmas.train.trainer import Trainer

    tcfg = train_config(cfg, method)
    final = tcfg.out_dir() / "final"
    manifest = ckpt.read_manifest(final)
    if manifest is not None and manifest.get("step") == cfg.train_steps:
        print(f"{method}: using the finished training run in {final}")
        return final
    print(f"training {method}: {cfg.train_steps} steps x {cfg.train_batch_size} {cfg.task} problems")
    summary = Trainer(tcfg).train()
    last = summary["last"]
    if last is not None:
        print(f"{method}: loss {last['loss']:.3f} after {summary['steps']} steps ({summary['seconds']:.0f}s)")
    gc.collect()
    return final


def run_demo(cfg: DemoConfig) -> list[dict]:
    """Train both trained methods, evaluate all five, write summary.json and the plot."""
    out = Path(cfg.out)
    adapters = {m: str(train_once(cfg, m)) for m in ("diffmas", "single_sft")}
    base = EvalConfig(
        model=cfg.model,
        dtype=cfg.dtype,
        device=cfg.device,
        cache_dir=cfg.cache_dir,
        task=cfg.task,
        split="test",
        limit=cfg.limit,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        latent_steps=cfg.latent_steps,
        topology="sequential",
        resume=True,
    )
    lm = None
    summaries = []
    for method in METHODS:
        run = replace(
            base,
            method=method,
            out=str(out / method),
            adapter=adapters.get(method),
            topology=None if method in ("single", "single_sft", "diffmas") else "sequential",
        )
        if method in adapters:  # adapters attach to the model: a trained method gets a fresh copy
            summaries.append(evaluate(run, lm=run.load_lm()))
            gc.collect()
            continue
        lm = lm or base.load_lm()
        summaries.append(evaluate(run, lm=lm))
    (out / "summary.json").write_text(json.dumps(summaries, indent=2))
    plot_accuracy(summaries, out / "demo.png", title=f"{cfg.model} on {cfg.limit} held-out {cfg.task} problems")
    return summaries


def report(summaries: list[dict]) -> list[str]:
    lines = ["", summary_table(summaries), *ratio_lines(summaries)]
    by = {s["method"]: s for s in summaries}
    if "diffmas" in by and "single_sft" in by:
        d, c = by["diffmas"], by["single_sft"]
        verdict = "above" if d["accuracy"] > c["accuracy"] else "not above"
        lines.append(
            f"diffmas ({100 * d['accuracy']:.1f}%) is {verdict} its control single_sft "
            f"({100 * c['accuracy']:.1f}%) after this brief training: read it with the 95% intervals"
        )
    return lines
