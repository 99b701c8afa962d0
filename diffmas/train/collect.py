"""``diffmas collect``: supervision from a teacher system's trajectories.

A teacher (a text multi-agent system, sampled, on any model) answers the training problems; every
attempt is appended to ``attempts.jsonl`` (so an interrupted run resumes where it stopped) and the
attempts whose final answer is correct become ``trajectories.jsonl``: per problem, the text each
agent wrote. Training reads them (``diffmas train --trajectories DIR``) for its first stage, in
which every agent learns its own role's text, and optionally as the final agent's target.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from diffmas.agents import load_system
from diffmas.config import option, redefault
from diffmas.engine import LM, ModelConfig
from diffmas.errors import DataError, DiffMASError
from diffmas.methods import MethodConfig, TextMAS
from diffmas.options import OutputOptions, SamplingOptions, SystemOptions, TrainingDataOptions, check_samples
from diffmas.records import read_records, rewrite_clean, write_records
from diffmas.tasks import get_task
from diffmas.train.data import load_examples

ATTEMPTS = "attempts.jsonl"
TRAJECTORIES = "trajectories.jsonl"


@dataclass
class CollectConfig(ModelConfig, SystemOptions, TrainingDataOptions, SamplingOptions, OutputOptions):
    default_out: ClassVar[str] = "runs/collect-{task}"

    samples: int = option(1, "attempts per problem (each with its own sampling seed)")
    temperature: float = redefault(SamplingOptions, "temperature", 0.7)
    top_p: float = redefault(SamplingOptions, "top_p", 0.95)
    max_new_tokens: int = option(512, "token budget of the final agent")
    agent_max_new_tokens: int = option(256, "token budget of each upstream agent")
    batch_size: int = option(8, "problems per batch")
    seed: int = redefault(SamplingOptions, "seed", 0, "sampling seed (attempt s of a batch uses seed + s)")

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 1024:
            raise DiffMASError(f"batch_size must be in [1, 1024], got {self.batch_size}")
        if self.temperature < 0:
            raise DiffMASError(f"temperature must be >= 0, got {self.temperature}")
        check_samples(self.samples, self.temperature, "attempt")


def collect(cfg: CollectConfig, lm: LM | None = None, progress: bool = True) -> dict:
    """Run the teacher over the problems; write attempts, kept trajectories and a summary."""
    task = get_task(cfg.task)
    examples, source = load_examples(task, cfg.split, cfg.data_path, cfg.exclude_last, cfg.offset, cfg.limit)
    out = cfg.out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiffMASError(f"cannot create output directory {out}: {exc.strerror}") from None
    attempts_path = out / ATTEMPTS
    if attempts_path.exists() and not cfg.resume:
        raise DiffMASError(f"{attempts_path} already exists; pass --resume to continue it or choose another --out")
    done = {(r["id"], r["sample"]) for r in rewrite_clean(attempts_path)} if cfg.resume else set()
    lm = lm or cfg.load_lm()
    system = load_system(cfg.system, cfg.topology)
    base = MethodConfig(
        max_new_tokens=cfg.max_new_tokens,
        agent_max_new_tokens=cfg.agent_max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )
    teacher = TextMAS(lm, base, family=task.family, answer_format=task.answer_format, system=system)
    todo = [(s, ex) for s in range(cfg.samples) for ex in examples if (ex.id, s) not in done]
    kept_now = 0
    bar = tqdm(total=len(todo), disable=not progress, desc=f"collect {cfg.task}", unit="attempt")
    with open(attempts_path, "a") as fh, torch.inference_mode():
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start : start + cfg.batch_size]
            # A seed per batch, from its first attempt's sample and its position in the to-do list:
            # a fresh run is reproducible; a resumed one draws other tokens for what is left.
            teacher.config.seed = cfg.seed + 1_000_003 * chunk[0][0] + start
            traces = teacher.run([ex.question for _, ex in chunk], [ex.id for _, ex in chunk])
            for (sample, ex), trace in zip(chunk, traces):
                prediction, correct = task.score(trace.final_text, ex)
                kept_now += bool(correct)
                record = {
                    "id": ex.id,
                    "sample": sample,
                    "question": ex.question,
                    "gold": ex.gold,
                    "prediction": prediction,
                    "correct": correct,
                    "system": system.name,
                    "agents": [{"agent": a.agent, "role": a.role, "text": a.text} for a in trace.agents],
                }
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            bar.update(len(chunk))
            bar.set_postfix(kept=kept_now)
    bar.close()
    attempts = read_records(attempts_path)
    kept = [r for r in attempts if r["correct"]]
    write_records(out / TRAJECTORIES, kept)
    summary = {
        "task": cfg.task,
        "source": source,
        "system": system.name,
        "model": cfg.model,
        "problems": len(examples),
        "attempts": len(attempts),
        "kept": len(kept),
        "problems_solved": len({r["id"] for r in kept}),
        "acceptance": len(kept) / len(attempts) if attempts else 0.0,
        "config": asdict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_trajectories(path: str | Path) -> list[dict]:
    """Kept trajectories from a collect output directory or a trajectories.jsonl file."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAJECTORIES
    if not path.is_file():
        raise DataError(f"no trajectories at {path}: run `diffmas collect --out DIR` first and pass that DIR")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts = [a["text"] for a in row["agents"]]
            row["id"], row["question"]  # noqa: B018 (required fields)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}:{n} is not a trajectory written by `diffmas collect`") from None
        if any(not isinstance(t, str) for t in texts):
            raise DataError(f"{path}:{n}: every agent needs a text")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no trajectories (did the teacher solve any problem?)")
    return rows
