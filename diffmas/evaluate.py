"""Run a method over a task: one JSON line per example, a summary JSON, resumable.

Data flows one way: task -> method -> records -> summary (-> report).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffmas.agents import load_system
from diffmas.config import option
from diffmas.engine import LM, AnswerCue, ModelConfig
from diffmas.errors import DiffMASError
from diffmas.methods import Method, MethodConfig, get_method_class
from diffmas.tasks import Example, LoadResult, Task, get_task

RECORDS = "records.jsonl"
SUMMARY = "summary.json"


@dataclass
class SetupConfig(MethodConfig, ModelConfig):
    """Which model and which method (with its system) to run: shared by `eval` and `run`."""

    method: str = option("latent_mas", "single | text_mas | latent_mas | diffmas | single_sft (the last two: "
                         "trained, with --adapter)")
    system: str | None = option(None, "built-in system name or YAML file defining the agents")
    topology: str | None = option(None, "sequential | hierarchical (picks the built-in system)")
    adapter: str | None = option(None, "trained adapters for diffmas / single_sft: a `diffmas train` output "
                                 "directory or one of its checkpoints")

    def method_config(self) -> MethodConfig:
        return MethodConfig(**{f.name: getattr(self, f.name) for f in fields(MethodConfig)})

    def build_method(self, lm: LM, task: Task) -> Method:
        return build_method(self.method, lm, self.method_config(), task, self.system, self.topology, self.adapter)


@dataclass
class EvalConfig(SetupConfig):
    task: str = option("synthetic-arith", "task name (see `diffmas tasks`)")
    split: str | None = option(None, "data split (default: the task's own default)")
    data_path: str | None = option(None, "read the task's data from this local file")
    offset: int | None = option(None, "skip the first N examples; negative: keep only the last |N|")
    limit: int | None = option(None, "evaluate at most N examples (after --offset)")
    batch_size: int = option(8, "problems per batch")
    refill: float = option(0.25, "continuous batching: when at most this share of a batch is still writing its "
                           "answers, the next batch is prepared and joins them (0: batches run one after another)")
    by_length: bool = option(True, "batch the problems longest question first, so that each batch's prompts "
                             "need little left padding (records are keyed by example id: order does not matter)")
    samples: int = option(1, "answer every problem k times with different sampling seeds (needs --temperature "
                          "> 0): per-seed accuracy, majority vote and answer agreement")
    # On MedQA dev the untrained latent_mas judger named no option in 20 of 50 answers (13 ran to
    # their budget setting out a plan): a reader wants its choice, and the records say which were cued.
    answer_cue: bool = option(True, "when no answer can be read from an output, append the task's answer cue "
                              "(\"Therefore, the final answer is \\boxed{\") and let the model finish it in a few "
                              "tokens (multiple choice: the likeliest option letter); the record says answer_cued "
                              "(zero-shot CoT's answer extraction)")
    out: str | None = option(None, "output directory (default: runs/<task>-<method>)")
    resume: bool = option(False, "skip examples already written to the output directory")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.batch_size <= 1024:
            raise DiffMASError(f"batch_size must be in [1, 1024], got {self.batch_size}")
        check_samples(self.samples, self.temperature, "answer")
        if not 0 <= self.refill <= 1:
            raise DiffMASError(f"refill must be in [0, 1], got {self.refill}")

    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.task}-{self.method}")


def check_samples(samples: int, temperature: float, what: str) -> None:
    """Several samples per problem need sampling: greedy decoding repeats itself."""
    if not 1 <= samples <= 64:
        raise DiffMASError(f"samples must be in [1, 64], got {samples}")
    if samples > 1 and temperature == 0:
        raise DiffMASError(f"greedy decoding (temperature 0) gives the same {what} every time: with --samples > 1 "
                           "set --temperature (e.g. 0.7) and optionally --top-p")


def build_method(name: str, lm: LM, config: MethodConfig, task: Task, system: str | None = None,
                 topology: str | None = None, adapter: str | None = None) -> Method:
    """The one place a method is assembled from names: used by eval, run and benchmarks.

    Trained methods (``adapter``) default to the system recorded in their checkpoint."""
    cls = get_method_class(name)
    explicit = system is not None or topology is not None
    spec = load_system(system, topology) if cls.uses_system and (explicit or not cls.needs_adapter) else None
    return cls(lm, config, family=task.family, answer_format=task.answer_format, system=spec, adapter=adapter)


def answer_cue(task: Task, lm: LM, examples: Callable[[], list[Example]]) -> AnswerCue | None:
    """``task``'s answer cue for ``lm`` (None where the task has none) for the problems of the
    stream being answered, ``examples()`` (read when a row is cued: the list changes per sample)."""
    if not task.answer_cue:
        return None

    def token_ids(text: str) -> list[int]:
        return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def readable(i: int, text: str) -> bool:
        return task.extract_answer(text, examples()[i]) is not None

    def choices(i: int) -> list[int] | None:
        ids = [token_ids(s) for s in task.answer_choices(examples()[i]) or ()]
        # Only where each choice is one token (Qwen's and Llama's option letters are).
        return [t[0] for t in ids] if ids and all(len(t) == 1 for t in ids) else None

    return AnswerCue(task.answer_cue, token_ids(task.answer_cue), readable, choices=choices, close_ids=token_ids("}"))


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


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: a reader or a crash never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_records(path: Path, records: list[dict]) -> None:
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def rewrite_clean(path: Path) -> list[dict]:
    """Rewrite ``path`` without a torn last line (a run killed mid-write), so that appended
    records start on a line of their own; return the records kept."""
    records = read_records(path)
    if path.exists():
        write_records(path, records)
    return records


def _key(record: dict) -> tuple[str, int]:
    return record["id"], record.get("sample", 0)


def _keys(examples: list[Example], samples: int) -> set[tuple[str, int]]:
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
    for r in sorted(records, key=_key):
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
    return {"samples": samples, "per_seed_accuracy": per_seed, "mean": mean, "std": std,
            "majority_accuracy": majority / n, "agreement": agree / n}


def summarise(records: list[dict], cfg: EvalConfig, extra: dict) -> dict:
    # Accuracy and its interval count each problem once (its first sample); costs average over
    # every answer; with several samples a stability block is added.
    first = [r for r in records if r.get("sample", 0) == 0]
    n = len(first)
    correct = sum(r["correct"] for r in first)
    lo, hi = wilson_interval(correct, n)

    def mean(key: str) -> float:  # records of older versions may lack a key
        return sum(r.get(key, 0) for r in records) / len(records) if records else 0.0

    if cfg.samples > 1:
        extra = {**extra, "stability": stability(records, cfg.samples)}
    return {
        "task": cfg.task, "split": extra.get("split"), "method": cfg.method, "model": cfg.model,
        "n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "ci95": [lo, hi],
        "mean_generated_tokens": mean("generated_tokens"), "mean_latent_steps": mean("latent_steps"),
        "mean_prompt_tokens": mean("prompt_tokens"), "mean_seconds": mean("seconds"),
        "mean_passed_text_tokens": mean("passed_text_tokens"),
        "mean_passed_latent_vectors": mean("passed_latent_vectors"),
        "method_seconds": sum(r["seconds"] for r in records),
        "answers": len(records),  # n x samples once complete
        "extraction_failures": sum(r["prediction"] is None for r in records),  # of all answers
        # Of the n problems' first answers, as accuracy: accuracy without the cue is
        # (correct - cued_correct) / n (a cued answer is the only answer there is).
        "answers_cued": sum(bool(r.get("answer_cued")) for r in first),
        "cued_correct": sum(bool(r.get("answer_cued")) and r["correct"] for r in first),
        **extra, "config": asdict(cfg),
    }


def _prepare_out(cfg: EvalConfig) -> Path:
    out = cfg.out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiffMASError(f"cannot create output directory {out}: {exc.strerror}; choose another --out") from None
    if not os.access(out, os.W_OK):
        raise DiffMASError(f"output directory {out} is not writable; choose another --out")
    if (out / RECORDS).exists() and not cfg.resume:
        raise DiffMASError(f"{out / RECORDS} already exists; pass --resume to continue it or choose another --out")
    return out


def evaluate(cfg: EvalConfig, lm: LM | None = None, progress: bool = True) -> dict:
    """Evaluate ``cfg.method`` on ``cfg.task``; returns the summary (also written to disk)."""
    started = time.perf_counter()
    task = get_task(cfg.task)
    loaded = task.load(split=cfg.split, data_path=cfg.data_path, limit=cfg.limit, seed=cfg.seed, offset=cfg.offset)
    out = _prepare_out(cfg)
    done = {_key(r) for r in rewrite_clean(out / RECORDS)} if cfg.resume else set()
    total = len(loaded.examples) * cfg.samples
    lm = lm or cfg.load_lm()
    method = cfg.build_method(lm, task)
    if cfg.repeat_question is None:  # record it as resolved (diffmas: as its adapters were trained)
        cfg = replace(cfg, repeat_question=method.config.repeat_question)
    torch.manual_seed(cfg.seed)
    todo: list[Example] = []
    cue = answer_cue(task, lm, lambda: todo) if cfg.answer_cue else None
    bar = tqdm(total=total, initial=len(done & _keys(loaded.examples, cfg.samples)), disable=not progress,
               desc=f"{cfg.method} on {cfg.task}", unit="problem")
    with open(out / RECORDS, "a") as fh, torch.inference_mode():
        for sample in range(cfg.samples):
            method.config.seed = cfg.seed + 7919 * sample  # each sample draws its own tokens
            todo = [ex for ex in loaded.examples if (ex.id, sample) not in done]
            stream = method.run_stream([ex.question for ex in todo], [ex.id for ex in todo], cfg.batch_size, cfg.refill,
                                       cfg.by_length, cue)
            t0 = time.perf_counter()
            for i, trace in stream:
                # Answers finish one by one, batches overlap: each record gets the wall time since
                # the previous one, so that the records' seconds add up to the method's time.
                now = time.perf_counter()
                record = make_record(todo[i], trace, task, now - t0)
                t0 = now
                if cfg.samples > 1:
                    record["sample"] = sample
                fh.write(json.dumps(record) + "\n")
                fh.flush()  # a killed run keeps every finished answer
                bar.update(1)
    bar.close()
    wanted = _keys(loaded.examples, cfg.samples)
    records = [r for r in read_records(out / RECORDS) if _key(r) in wanted]
    extra = {"split": cfg.split, "source": loaded.source, "chance": task.chance(loaded.examples),
             "skipped_rows": loaded.skipped,
             "skipped_reasons": loaded.skipped_reasons, "wall_seconds": time.perf_counter() - started,
             "peak_memory_mb": peak_memory_mb(cfg.device)}
    summary = summarise(records, cfg, extra)
    write_atomically(out / SUMMARY, json.dumps(summary, indent=2))
    return summary


def saved_run(out: Path) -> tuple[dict, EvalConfig, Task, LoadResult, list[dict]]:
    """A finished evaluation run read back: its summary, config, task, data and records, each record
    checked to be an example of that data with its output text saved."""
    if not (out / RECORDS).exists() or not (out / SUMMARY).exists():
        raise DiffMASError(f"{out} is not a finished evaluation run (needs {RECORDS} and {SUMMARY}); "
                           "run `diffmas eval` first")
    old = json.loads((out / SUMMARY).read_text())
    known = {f.name for f in fields(EvalConfig)}
    cfg = EvalConfig(**{k: v for k, v in old["config"].items() if k in known})
    if cfg.data_path is None and Path(old.get("source") or "").is_file():
        cfg.data_path = old["source"]  # the same local file the run read, wherever DIFFMAS_DATA_DIR points now
    task = get_task(cfg.task)
    loaded = task.load(split=cfg.split, data_path=cfg.data_path, limit=cfg.limit, seed=cfg.seed, offset=cfg.offset)
    ids = {ex.id for ex in loaded.examples}
    records = read_records(out / RECORDS)
    for r in records:
        if r["id"] not in ids:
            raise DiffMASError(f"record {r['id']!r} is not in {cfg.task} ({loaded.source}): the data changed "
                               "since this run; evaluate again instead")
        if "output" not in r:
            raise DiffMASError(f"record {r['id']!r} has no saved output (written by an older version); "
                               "evaluate again instead")
    return old, cfg, task, loaded, records


def rescore(run_dir: str | Path) -> tuple[dict, list[tuple[str, str | None, str | None]]]:
    """Score the saved outputs of an evaluation run again with the task's current extraction.

    A better answer extractor should not need the model run again: each record keeps its final
    output text. Records and summary are rewritten in place (each atomically); returns the new
    summary and the predictions that changed, as (id, before, after).
    """
    out = Path(run_dir)
    old, cfg, task, loaded, records = saved_run(out)
    examples = {ex.id: ex for ex in loaded.examples}
    changed = []
    for r in records:
        prediction, correct = task.score(r["output"], examples[r["id"]])
        if prediction != r["prediction"]:
            changed.append((r["id"], r["prediction"], prediction))
        r["prediction"], r["correct"] = prediction, bool(correct)
    write_records(out / RECORDS, records)
    keep = ("split", "source", "skipped_rows", "skipped_reasons", "wall_seconds", "peak_memory_mb")
    extra = {k: old[k] for k in keep if k in old}
    summary = summarise(records, cfg, {**extra, "chance": task.chance(loaded.examples)})
    write_atomically(out / SUMMARY, json.dumps(summary, indent=2))
    return summary, changed
