"""Run a method over a task: one JSON line per example, a summary JSON, resumable.

Data flows one way: task -> method -> records -> summary (-> report).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from diffmas.checkpoint import weights_digest
from diffmas.config import option
from diffmas.decoding import AnswerCue
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.methods import Method, SetupConfig
from diffmas.options import DataOptions, OutputOptions, check_samples
from diffmas.records import (
    RECORDS,
    SETTINGS,
    SUMMARY,
    make_record,
    peak_memory_mb,
    read_records,
    record_key,
    record_keys,
    rewrite_clean,
    summarise,
    write_atomically,
    write_records,
)
from diffmas.rundir import LOCK, RunLock, check_settings
from diffmas.tasks import Example, LoadResult, Task, get_task

SHARD_GLOB = "records.shard-*.jsonl"
MERGE_LOCK = ".lock-merge"
# Settings a resumed evaluation may change: where and how fast it runs, not what it answers.
FREE_ON_RESUME = ("out", "resume", "device", "cache_dir", "packed", "cpu_attention", "batch_size", "refill",
                  "by_length", "samples", "shard")  # fmt: skip


@dataclass
class EvalConfig(SetupConfig, DataOptions, OutputOptions):
    default_out: ClassVar[str] = "runs/{task}-{method}"

    batch_size: int = option(8, "problems per batch")
    refill: float = option(
        0.25,
        "continuous batching: when at most this share of a batch is still writing its "
        "answers, the next batch is prepared and joins them (0: batches run one after another)",
    )
    by_length: bool = option(
        True,
        "batch the problems longest question first, so that each batch's prompts "
        "need little left padding (records are keyed by example id: order does not matter)",
    )
    samples: int = option(
        1,
        "answer every problem k times with different sampling seeds (needs --temperature "
        "> 0): per-seed accuracy, majority vote and answer agreement",
    )
    shard: str | None = option(
        None,
        "K/N: answer problems K, K+N, K+2N, ... (0-based) into the same --out, beside the other shards "
        "(default under torchrun or accelerate: RANK/WORLD_SIZE); the last shard to finish merges "
        "the records and writes the summary",
    )
    # On MedQA dev the untrained latent_mas judger named no option in 20 of 50 answers (13 ran to
    # their budget setting out a plan): a reader wants its choice, and the records say which were cued.
    answer_cue: bool = option(
        True,
        "when no answer can be read from an output, append the task's answer cue "
        '("Therefore, the final answer is \\boxed{") and let the model finish it in a few '
        "tokens (multiple choice: the likeliest option letter); the record says answer_cued "
        "(zero-shot CoT's answer extraction)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.batch_size <= 1024:
            raise DiffMASError(f"batch_size must be in [1, 1024], got {self.batch_size}")
        check_samples(self.samples, self.temperature, "answer")
        if not 0 <= self.refill <= 1:
            raise DiffMASError(f"refill must be in [0, 1], got {self.refill}")


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


def stream_answers(method: Method, examples: list[Example], cfg: EvalConfig, cue: AnswerCue | None):
    """(index into ``examples``, trace) as each answer finishes, batched as ``cfg`` says: the one
    way answers are produced, for ``diffmas eval`` and for :class:`diffmas.api.System`."""
    questions, ids = [ex.question for ex in examples], [ex.id for ex in examples]
    return method.run_stream(questions, ids, cfg.batch_size, cfg.refill, cfg.by_length, cue)


def _prepare_out(cfg: EvalConfig, records: str = RECORDS) -> Path:
    out = cfg.out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiffMASError(f"cannot create output directory {out}: {exc.strerror}; choose another --out") from None
    if not os.access(out, os.W_OK):
        raise DiffMASError(f"output directory {out} is not writable; choose another --out")
    for name in dict.fromkeys([RECORDS, records]):
        if (out / name).exists() and not cfg.resume:
            raise DiffMASError(f"{out / name} already exists; pass --resume to continue it or choose another --out")
    return out


def _check_resume(out: Path, cfg: EvalConfig, sharded: bool = False) -> None:
    """Refuse to add records made with other settings to those already there (a summary would
    then describe a mix). ``--limit`` may grow (the run goes on to more problems of the same
    list), never shrink. Runs from before settings were saved are checked against their summary.
    Shards always keep to the settings saved (another shard may have started with them)."""
    path, now = out / SETTINGS, asdict(cfg)
    # The adapters' contents, not only their path: a run retrained into the same folder is another system.
    now["adapter_weights"] = weights_digest(cfg.adapter) if cfg.adapter else None
    if not sharded and not _written(out):  # nothing written yet: nothing to mix
        path.unlink(missing_ok=True)
    elif not path.exists() and (out / SUMMARY).exists():
        try:
            write_atomically(path, json.dumps(json.loads((out / SUMMARY).read_text())["config"]))
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    saved = _saved(path) if path.exists() else None  # unreadable: {} (check_settings says why)
    if saved is not None:
        before = saved.get("limit", cfg.limit)
        if cfg.limit is not None and (before is None or cfg.limit < before):
            raise DiffMASError(
                f"cannot resume the evaluation in {out} with a smaller --limit ({before} -> {cfg.limit}): its "
                "records of the other problems would stay outside the summary; use the run's --limit or a "
                "larger one, or choose another --out"
            )
    fixed = [k for k in now if k not in FREE_ON_RESUME and k != "limit"]
    if saved is not None and "adapter_weights" not in saved:
        fixed.remove("adapter_weights")  # saved before the contents were: not known, not compared
    check_settings(path, now, fixed, "the evaluation")


def _saved(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def evaluate(cfg: EvalConfig, lm: LM | None = None, progress: bool = True) -> dict:
    """Evaluate ``cfg.method`` on ``cfg.task``; returns the summary (also written to disk)."""
    started = time.perf_counter()
    task = get_task(cfg.task)
    loaded = task.load(
        split=cfg.split, data_path=cfg.data_path, limit=cfg.limit, seed=cfg.seed, offset=cfg.offset, fields=cfg.fields
    )
    shard, shards = shard_of(cfg)
    if shards > 1 and cfg.device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process
        cfg = replace(cfg, device=f"cuda:{os.environ['LOCAL_RANK']}")
    out = _prepare_out(cfg, shard_file(shard, shards))
    command = f"diffmas eval --method {cfg.method}" + (f" --shard {shard}/{shards}" if shards > 1 else "")
    if shards == 1:
        locks = [RunLock(out, command)]
    else:  # shards run side by side (a shared lock), never beside an unsharded run; one process per shard
        locks = [RunLock(out, command, shared=True), RunLock(out, command, name=f"{LOCK}-{shard_file(shard, shards)}")]
    try:
        for lock in locks:
            lock.acquire()
        with RunLock(out, command, name=MERGE_LOCK, wait=True):
            _check_resume(out, cfg, sharded=shards > 1)
        resolved = _answer(cfg, task, loaded, out, lm, progress, shard, shards)
        return _merge(resolved, task, loaded, out, started, shard, shards)
    finally:
        for lock in locks:
            lock.release()


def shard_of(cfg: EvalConfig) -> tuple[int, int]:
    """(K, N): this process answers problems K, K+N, K+2N, ... (--shard K/N, else torchrun's or
    accelerate's RANK and WORLD_SIZE, else 0/1)."""
    spec = cfg.shard or (
        f"{os.environ.get('RANK', '0')}/{os.environ['WORLD_SIZE']}" if "WORLD_SIZE" in os.environ else "0/1"
    )
    k, _, n = spec.partition("/")
    try:
        k, n = int(k), int(n)
    except ValueError:
        raise DiffMASError(f"--shard must be K/N with 0 <= K < N, e.g. 0/2; got {spec!r}") from None
    if not 0 <= k < n:
        raise DiffMASError(f"--shard must be K/N with 0 <= K < N, e.g. 0/2; got {spec!r}")
    return k, n


def shard_file(shard: int, shards: int) -> str:
    return RECORDS if shards == 1 else f"records.shard-{shard}-of-{shards}.jsonl"


def _written(out: Path) -> list[dict]:
    """Every record in ``out``: the merged file's and those of unmerged shards."""
    return [r for p in [out / RECORDS, *sorted(out.glob(SHARD_GLOB))] for r in read_records(p)]


def _answer(
    cfg: EvalConfig, task: Task, loaded: LoadResult, out: Path, lm, progress: bool, shard: int, shards: int
) -> EvalConfig:
    """Answer this shard's problems not yet in ``out``, appending their records to its file;
    returns ``cfg`` with what building the method resolved (the summary records that)."""
    mine = loaded.examples[shard::shards]
    path = out / shard_file(shard, shards)
    rewrite_clean(path)  # a line cut short by a kill is dropped
    done = {record_key(r) for r in _written(out)} if cfg.resume else set()
    total = len(mine) * cfg.samples
    lm = lm or cfg.load_lm()
    method = cfg.build_method(lm, task)
    # Record what was resolved when the method was built (diffmas: as its adapters were trained).
    cfg = replace(cfg, repeat_question=method.config.repeat_question, latent_steps=method.config.latent_steps)
    torch.manual_seed(cfg.seed)
    todo: list[Example] = []
    cue = answer_cue(task, lm, lambda: todo) if cfg.answer_cue else None
    bar = tqdm(
        total=total,
        initial=len(done & record_keys(mine, cfg.samples)),
        disable=not progress,
        desc=f"{cfg.method} on {cfg.task}" + (f" (shard {shard}/{shards})" if shards > 1 else ""),
        unit="problem",
    )
    with open(path, "a") as fh, torch.inference_mode():
        for sample in range(cfg.samples):
            method.config.seed = cfg.seed + 7919 * sample  # each sample draws its own tokens
            todo = [ex for ex in mine if (ex.id, sample) not in done]
            stream = stream_answers(method, todo, cfg, cue)
            for i, trace in stream:
                # Each problem's share of the compute (Method.run_stream): batches overlap, so the
                # wall time between two finished answers would charge one row for many.
                record = make_record(todo[i], trace, task, trace.seconds or 0.0)
                if cfg.samples > 1:
                    record["sample"] = sample
                fh.write(json.dumps(record) + "\n")
                fh.flush()  # a killed run keeps every finished answer
                bar.update(1)
    bar.close()
    return cfg


def _merge(cfg: EvalConfig, task: Task, loaded: LoadResult, out: Path, started: float, shard: int, shards: int):
    """Fold the shards' records into records.jsonl and write the summary, once every problem has
    its records (the last shard to finish does it); else the summary of this shard's records."""
    wanted = record_keys(loaded.examples, cfg.samples)
    with RunLock(out, "diffmas eval (merging shards)", name=MERGE_LOCK, wait=True):
        found: dict = {}
        for r in _written(out):
            found.setdefault(record_key(r), r)
        complete = wanted <= set(found)
        if complete and any(out.glob(SHARD_GLOB)):
            ordered = [r for r in found.values() if record_key(r) not in wanted]  # beyond the limit: kept
            ordered += [found[(ex.id, s)] for s in range(cfg.samples) for ex in loaded.examples]
            write_atomically(out / RECORDS, "".join(json.dumps(r) + "\n" for r in ordered))
            for path in out.glob(SHARD_GLOB):
                path.unlink()
        if complete:
            records = [found[k] for k in sorted(wanted, key=lambda k: (k[1], k[0]))]
        else:
            mine = record_keys(loaded.examples[shard::shards], cfg.samples)
            records = [found[k] for k in mine if k in found]
    extra = {
        "split": cfg.split,
        "source": loaded.source,
        "chance": task.chance(loaded.examples),
        "skipped_rows": loaded.skipped,
        "skipped_reasons": loaded.skipped_reasons,
        "wall_seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb(cfg.device),
    }
    if not complete:  # other shards still answer: the last one writes the run's summary
        return {**summarise(records, cfg, extra), "shard": f"{shard}/{shards}", "complete": False}
    summary = summarise(records, cfg, extra)
    write_atomically(out / SUMMARY, json.dumps(summary, indent=2))
    return summary


def saved_run(out: Path) -> tuple[dict, EvalConfig, Task, LoadResult, list[dict]]:
    """A finished evaluation run read back: its summary, config, task, data and records, each record
    checked to be an example of that data with its output text saved."""
    if not (out / RECORDS).exists() or not (out / SUMMARY).exists():
        raise DiffMASError(
            f"{out} is not a finished evaluation run (needs {RECORDS} and {SUMMARY}); run `diffmas eval` first"
        )
    old = json.loads((out / SUMMARY).read_text())
    known = {f.name for f in fields(EvalConfig)}
    cfg = EvalConfig(**{k: v for k, v in old["config"].items() if k in known})
    if cfg.data_path is None and Path(old.get("source") or "").is_file():
        cfg.data_path = old["source"]  # the same local file the run read, wherever DIFFMAS_DATA_DIR points now
    task = get_task(cfg.task)
    loaded = task.load(
        split=cfg.split, data_path=cfg.data_path, limit=cfg.limit, seed=cfg.seed, offset=cfg.offset, fields=cfg.fields
    )
    ids = {ex.id for ex in loaded.examples}
    records = read_records(out / RECORDS)
    for r in records:
        if r["id"] not in ids:
            raise DiffMASError(
                f"record {r['id']!r} is not in {cfg.task} ({loaded.source}): the data changed "
                "since this run; evaluate again instead"
            )
        if "output" not in r:
            raise DiffMASError(
                f"record {r['id']!r} has no saved output (written by an older version); evaluate again instead"
            )
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
