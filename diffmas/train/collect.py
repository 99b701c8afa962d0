"""``diffmas collect``: targets in the model's own words (rejection sampling).

A teacher (any untrained method: ``single``, ``text_mas`` or ``latent_mas``, on any model, sampled
k times per problem) answers the training problems; every attempt is appended to
``attempts.jsonl`` (so an interrupted run resumes where it stopped) and the attempts whose final
answer is correct, one per distinct final text, become ``trajectories.jsonl``: per problem, the
text each agent wrote (None for latent agents). Training reads them (``diffmas train
--trajectories DIR``): as the final agent's target (``--target trajectory``, the same kept set for
diffmas and its single_sft control), and, from a text_mas teacher, for the two-stage schedule in
which every agent first learns its own role's text.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from diffmas.agents import load_system
from diffmas.config import option, redefault
from diffmas.engine import LM, ModelConfig
from diffmas.errors import DataError, DiffMASError
from diffmas.methods import MethodConfig, get_method_class
from diffmas.options import OutputOptions, SamplingOptions, SystemOptions, TrainingDataOptions, check_samples
from diffmas.records import read_records, rewrite_clean, write_records
from diffmas.rundir import RunLock, check_settings
from diffmas.tasks import get_task
from diffmas.train.data import load_examples

ATTEMPTS = "attempts.jsonl"
TRAJECTORIES = "trajectories.jsonl"
SETTINGS = "collect_config.json"
TEACHERS = ("single", "text_mas", "latent_mas")
# What decides the attempts: a resumed run must keep these (it may ask for more samples).
FIXED_ON_RESUME = (
    "model",
    "dtype",
    "task",
    "split",
    "data_path",
    "fields",
    "offset",
    "limit",
    "exclude_last",
    "system",
    "topology",
    "method",
    "latent_steps",
    "temperature",
    "top_p",
    "seed",
    "max_new_tokens",
    "agent_max_new_tokens",
)


@dataclass
class CollectConfig(ModelConfig, SystemOptions, TrainingDataOptions, SamplingOptions, OutputOptions):
    default_out: ClassVar[str] = "runs/collect-{task}"

    method: str = option("text_mas", "the teacher: single | text_mas | latent_mas", choices=TEACHERS)
    latent_steps: int = option(10, "latent steps per upstream agent (a latent_mas teacher)")
    samples: int = option(1, "attempts per problem (each with its own sampling seed)")
    temperature: float = redefault(SamplingOptions, "temperature", 0.7)
    top_p: float = redefault(SamplingOptions, "top_p", 0.95)
    max_new_tokens: int = option(512, "token budget of the final agent")
    agent_max_new_tokens: int = option(256, "token budget of each upstream agent")
    batch_size: int = option(8, "problems per batch")
    seed: int = redefault(SamplingOptions, "seed", 0, "sampling seed of the run (a resumed run draws anew)")

    def __post_init__(self) -> None:
        if self.method not in TEACHERS:
            raise DiffMASError(f"method must be one of {TEACHERS} (an untrained teacher), got {self.method!r}")
        if not 1 <= self.batch_size <= 1024:
            raise DiffMASError(f"batch_size must be in [1, 1024], got {self.batch_size}")
        if self.temperature < 0:
            raise DiffMASError(f"temperature must be >= 0, got {self.temperature}")
        check_samples(self.samples, self.temperature, "attempt")
        MethodConfig(latent_steps=self.latent_steps)  # its range check


def check_resume(out: Path, cfg: CollectConfig) -> None:
    """Refuse to continue ``out`` with settings that would mix attempts of two different teachers."""
    before = {"method": "text_mas", "latent_steps": 10}  # runs before these settings existed
    check_settings(out / SETTINGS, asdict(cfg), FIXED_ON_RESUME, "the collection", before)


def teacher_of(cfg: CollectConfig, lm: LM, task):
    cls = get_method_class(cfg.method)
    config = MethodConfig(
        latent_steps=cfg.latent_steps,
        max_new_tokens=cfg.max_new_tokens,
        agent_max_new_tokens=cfg.agent_max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )
    system = load_system(cfg.system, cfg.topology) if cls.uses_system else None
    return cls(lm, config, family=task.family, answer_format=task.answer_format, system=system)


def kept_trajectories(attempts: list[dict]) -> tuple[list[dict], int]:
    """The correct attempts, one per problem and distinct final text; also how many repeats were dropped."""
    kept, seen = [], set()
    for r in attempts:
        if not r["correct"]:
            continue
        key = (r["id"], " ".join((r["agents"][-1]["text"] or "").split()))
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept, sum(bool(r["correct"]) for r in attempts) - len(kept)


def collect(cfg: CollectConfig, lm: LM | None = None, progress: bool = True) -> dict:
    """Run the teacher over the problems; write attempts, kept trajectories and a summary."""
    task = get_task(cfg.task)
    examples, source = load_examples(
        task, cfg.split, cfg.data_path, cfg.exclude_last, cfg.offset, cfg.limit, fields=cfg.fields
    )
    out = cfg.out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiffMASError(f"cannot create output directory {out}: {exc.strerror}") from None
    attempts_path = out / ATTEMPTS
    if attempts_path.exists() and not cfg.resume:
        raise DiffMASError(f"{attempts_path} already exists; pass --resume to continue it or choose another --out")
    with RunLock(out, f"diffmas collect --method {cfg.method}"):
        check_resume(out, cfg)
        return _collect(cfg, task, examples, source, out, lm, progress)


def _collect(cfg: CollectConfig, task, examples, source: str, out: Path, lm: LM | None, progress: bool) -> dict:
    attempts_path = out / ATTEMPTS
    done = {(r["id"], r["sample"]) for r in rewrite_clean(attempts_path)} if cfg.resume else set()
    todo = [(s, ex) for s in range(cfg.samples) for ex in examples if (ex.id, s) not in done]
    started, tokens_now = time.perf_counter(), 0
    if todo:  # else the kept set and summary are written again, with no model loaded
        tokens_now = _sample(cfg, task, todo, len(done), attempts_path, lm or cfg.load_lm(), progress)
    seconds = time.perf_counter() - started
    attempts = read_records(attempts_path)
    kept, repeats = kept_trajectories(attempts)
    write_records(out / TRAJECTORIES, kept)
    summary = {
        "task": cfg.task,
        "source": source,
        "method": cfg.method,
        "system": attempts[0]["system"] if attempts else None,
        "model": cfg.model,
        "problems": len(examples),
        "attempts": len(attempts),
        "correct": sum(bool(r["correct"]) for r in attempts),
        "kept": len(kept),
        "repeats_dropped": repeats,
        "problems_solved": len({r["id"] for r in kept}),
        "acceptance": len(kept) / len(attempts) if attempts else 0.0,
        "attempts_this_run": len(todo),
        "seconds_this_run": round(seconds, 2),
        "seconds_per_attempt": round(seconds / len(todo), 3) if todo else None,
        "generated_tokens_per_attempt": round(tokens_now / len(todo), 1) if todo else None,
        "config": asdict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _sample(cfg: CollectConfig, task, todo: list, n_done: int, attempts_path: Path, lm: LM, progress: bool) -> int:
    """Answer every (sample, example) of ``todo``, appending each attempt; returns the tokens generated."""
    teacher = teacher_of(cfg, lm, task)
    kept_now, tokens_now = 0, 0
    bar = tqdm(total=len(todo), disable=not progress, desc=f"collect {cfg.task} ({cfg.method})", unit="attempt")
    # One sampling stream over every attempt left, batches refilled as answers finish (continuous
    # batching). A fresh run is reproducible; a resumed one draws other tokens for what is left.
    teacher.config.seed = cfg.seed + 1_000_003 * n_done
    questions, ids = [ex.question for _, ex in todo], [f"{ex.id}#{s}" for s, ex in todo]
    with open(attempts_path, "a") as fh, torch.inference_mode():
        stream = teacher.run_stream(questions, ids, batch_size=cfg.batch_size, by_length=True)
        for index, trace in stream:
            sample, ex = todo[index]
            prediction, correct = task.score(trace.final_text, ex)
            kept_now += bool(correct)
            tokens_now += trace.generated_tokens
            record = {
                "id": ex.id,
                "sample": sample,
                "question": ex.question,
                "gold": ex.gold,
                "prediction": prediction,
                "correct": correct,
                "method": cfg.method,
                "system": teacher.system.name if teacher.system is not None else None,
                "generated_tokens": trace.generated_tokens,
                "agents": [{"agent": a.agent, "role": a.role, "text": a.text} for a in trace.agents],
            }
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            bar.update(1)
            bar.set_postfix(correct=kept_now)
    bar.close()
    return tokens_now


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
            row["id"]  # noqa: B018 (required; the question is read from the task's data by id)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}:{n} is not a trajectory written by `diffmas collect`") from None
        if not texts or not isinstance(texts[-1], str) or any(t is not None and not isinstance(t, str) for t in texts):
            raise DataError(f"{path}:{n}: the final agent needs a text (and every other agent a text or null)")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no trajectories (did the teacher solve any problem?)")
    return rows
