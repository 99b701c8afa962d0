"""Evaluation records and summaries: one JSON line per answer, a summary JSON per run.

The format both sides share: :mod:`diffmas.evaluate` writes it, ``diffmas compare``, ``rescore``,
``collect`` and the benchmarks read it. Files are rewritten atomically, and a torn last line (a
run killed mid-write) is dropped when read.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from diffmas.rundir import write_atomically
from diffmas.tasks import Example, Task

RECORDS = "records.jsonl"
SETTINGS = "eval_config.json"  # an evaluation run's config, written before its first record
SUMMARY = "summary.json"


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sensible at 0% and 100%, unlike Wald)."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def peak_memory_mb(device: str = "cpu") -> float:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def read_records(path: Path) -> list[dict]:
    """Records written so far; a torn last line (killed mid-write) is ignored."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def write_records(path: Path, records: list[dict]) -> None:
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def rewrite_clean(path: Path) -> list[dict]:
    """Rewrite ``path`` without a torn last line (a run killed mid-write), so that appended
    records start on a line of their own; return the records kept."""
    records = read_records(path)
    if path.exists():
        write_records(path, records)
    return records


def record_key(record: dict) -> tuple[str, int]:
    return record["id"], record.get("sample", 0)


def record_keys(examples: list[Example], samples: int) -> set[tuple[str, int]]:
    return {(ex.id, s) for ex in examples for s in range(samples)}


def make_record(example: Example, trace, task: Task, seconds: float) -> dict:
    prediction, correct = task.score(trace.final_text, example)
    return {
        "id": example.id,
        "prediction": prediction,
        "gold": example.gold,
        "correct": bool(correct),
        "generated_tokens": trace.generated_tokens,
        "latent_steps": trace.latent_steps,
        "prompt_tokens": trace.prompt_tokens,
        # What passed between agents: upstream agents' decoded text tokens (read by later agents
        # in text_mas) against their latent vectors (left in the shared cache in latent_mas).
        "passed_text_tokens": sum(a.generated_tokens for a in trace.agents[:-1] if a.text is not None),
        "passed_latent_vectors": sum(a.latent_steps for a in trace.agents[:-1]),
        "answer_cued": trace.answer_cued,
        "perplexity": None if trace.perplexity is None else round(trace.perplexity, 4),
        "seconds": round(seconds, 4),
        "peak_memory_mb": round(peak_memory_mb(), 1),  # of the process, at the end of this example's batch
        "output": trace.final_text,
        "agents": [asdict(a) for a in trace.agents if a.text is not None and a is not trace.agents[-1]],
    }


def stability(records: list[dict], samples: int) -> dict:
    """Decoding stability of ``samples`` answers per problem: accuracy per seed (mean and sample
    standard deviation), accuracy of the majority answer (ties go to the earliest sample's answer),
    and agreement (the share of problems whose answers are all the same)."""
    by_problem: dict[str, list[dict]] = {}
    for r in sorted(records, key=record_key):
        by_problem.setdefault(r["id"], []).append(r)
    per_seed = []
    for s in range(samples):
        answers = [r for r in records if r.get("sample", 0) == s]
        per_seed.append(sum(r["correct"] for r in answers) / len(answers) if answers else 0.0)
    mean = sum(per_seed) / samples
    std = math.sqrt(sum((a - mean) ** 2 for a in per_seed) / (samples - 1)) if samples > 1 else 0.0
    majority = agree = 0
    for answers in by_problem.values():
        preds = [r["prediction"] for r in answers]
        top = max(preds, key=lambda p: (preds.count(p), -preds.index(p)))
        majority += next(r["correct"] for r in answers if r["prediction"] == top)
        agree += len(set(preds)) == 1
    n = max(1, len(by_problem))
    return {
        "samples": samples,
        "per_seed_accuracy": per_seed,
        "mean": mean,
        "std": std,
        "majority_accuracy": majority / n,
        "agreement": agree / n,
    }


def mean_of(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(records: list[dict], cfg: Any, extra: dict) -> dict:
    """The summary of an evaluation run's ``records``; ``cfg`` is its config (an ``EvalConfig``, or
    its dict as eval_config.json holds it)."""
    config = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    # Accuracy and its interval count each problem once (its first sample); costs average over
    # every answer; with several samples a stability block is added.
    first = [r for r in records if r.get("sample", 0) == 0]
    n = len(first)
    correct = sum(r["correct"] for r in first)
    lo, hi = wilson_interval(correct, n)

    def mean(key: str) -> float:  # records of older versions may lack a key
        return sum(r.get(key, 0) for r in records) / len(records) if records else 0.0

    samples = config.get("samples", 1)
    if samples > 1:
        extra = {**extra, "stability": stability(records, samples)}
    return {
        "task": config["task"],
        "split": extra.get("split"),
        "method": config["method"],
        "model": config["model"],
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci95": [lo, hi],
        "mean_generated_tokens": mean("generated_tokens"),
        "mean_latent_steps": mean("latent_steps"),
        "mean_prompt_tokens": mean("prompt_tokens"),
        "mean_seconds": mean("seconds"),
        "mean_passed_text_tokens": mean("passed_text_tokens"),
        "mean_passed_latent_vectors": mean("passed_latent_vectors"),
        # Decoding stability as the DiffMAS paper measures it: the answers' mean per-token perplexity.
        "mean_perplexity": mean_of([r["perplexity"] for r in records if r.get("perplexity") is not None]),
        "method_seconds": sum(r["seconds"] for r in records),
        "answers": len(records),  # n x samples once complete
        "extraction_failures": sum(r["prediction"] is None for r in records),  # of all answers
        # Of the n problems' first answers, as accuracy: accuracy without the cue is
        # (correct - cued_correct) / n (a cued answer is the only answer there is).
        "answers_cued": sum(bool(r.get("answer_cued")) for r in first),
        "cued_correct": sum(bool(r.get("answer_cued")) and r["correct"] for r in first),
        **extra,
        "config": config,
    }
