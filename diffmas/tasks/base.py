"""Task interface, loading pipeline and registry.

A task turns raw benchmark rows into :class:`Example` objects and scores model outputs against them.
Subclasses only describe where their data lives and implement :meth:`Task.parse_row`; the shared
:meth:`Task.load` does source resolution (file -> DIFFMAS_DATA_DIR -> hub), skipping of malformed
rows, and offset/limit windowing so that every task behaves the same for users.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diffmas.errors import DataError, UnknownNameError
from diffmas.prompts import ANSWER_CUE, DEFAULT_ANSWER_FORMAT
from diffmas.tasks import answers, io

MAX_REASONS = 10  # enough to diagnose a bad file without flooding logs
_CALCULATOR = re.compile(r"<<[^<>]*>>")


class RowError(ValueError):
    """A row that cannot become an Example; its message is the skip reason."""


@dataclass(frozen=True)
class Example:
    """One problem: what agents see (``question``) and the canonical ``gold`` answer."""

    id: str
    question: str
    gold: str
    meta: dict = field(default_factory=dict, hash=False)  # dicts are unhashable


@dataclass
class LoadResult:
    examples: list[Example]
    skipped: int
    skipped_reasons: list[str]
    source: str


def require(row: dict[str, Any], key: str) -> Any:
    """``row[key]``, or a RowError naming the missing field."""
    if key not in row or row[key] is None:
        raise RowError(f"missing field {key!r}")
    return row[key]


def require_text(row: dict[str, Any], key: str) -> str:
    value = require(row, key)
    if not isinstance(value, str):
        raise RowError(f"field {key!r} is {type(value).__name__}, expected text")
    if not value.strip():
        raise RowError(f"field {key!r} is empty")
    return value


def window(items, offset: int | None, limit: int | None, what: str = "the data") -> list:
    """Apply ``offset`` (negative = the last |offset| items) and then ``limit`` (the first N).
    A selection with nothing in it is refused: an accuracy over no problems means nothing."""
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}; leave it out to use every example")
    n = len(items)
    if offset:
        items = items[offset:]  # Python slicing already means "skip N" / "last |N|"
    if limit is not None:
        items = items[:limit]
    if not len(items):
        raise DataError(f"offset {offset} leaves no examples of the {n} in {what}; use an offset below {n}")
    return list(items)


class Task:
    """Base class of all tasks; see the module docstring for the loading pipeline."""

    name: str = ""
    family: str = "math"  # "math" | "multiple_choice" | "code"
    answer_format: str = ""
    answer_cue: str | None = None  # appended to an answer nothing can be read from (diffmas.decoding.AnswerCue)
    splits: tuple[str, ...] = ()
    default_split: str = "test"
    split_aliases: dict[str, str] = {}
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split_names: dict[str, str] = {}  # our split name -> hub split name, when they differ
    data_subdir: str = ""  # folder under DIFFMAS_DATA_DIR
    local_files: dict[str, tuple[str, ...]] = {}  # split -> candidate file names in data_subdir
    known_sizes: dict[str, int] = {}  # split -> published size, shown by `diffmas tasks` when not local

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.family})>"

    # ----------------------------------------------------------------- loading
    def resolve_split(self, split: str | None) -> str:
        if split is None:
            return self.default_split
        key = split.strip().lower()
        key = self.split_aliases.get(key, key)
        if key not in self.splits:
            valid = list(self.splits) + list(self.split_aliases)
            raise UnknownNameError("split", split, valid, hint=f"(task {self.name})")
        return key

    def load(
        self,
        split: str | None = None,
        data_path: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        offset: int | None = None,
        fields: dict[str, str] | str | None = None,
    ) -> LoadResult:
        """Load examples; ``seed`` only matters for generated tasks or option shuffling, never order.

        ``offset`` is applied before ``limit``: offset=-100 keeps the last 100 examples.
        ``fields``: the source's field names for the task's own (``{"question": "prompt"}`` or
        ``"question=prompt,answer=solution"``), for data files written with other names.
        """
        mapping = parse_fields(fields)
        resolved = self.resolve_split(split)
        if data_path is not None and split is None:
            # A file given without a split: label ids by the file name, not a split it may not be.
            label = Path(data_path).name.split(".")[0] or resolved
        else:
            label = resolved
        rows, source = self.raw_rows(resolved, data_path)
        if mapping:
            rows = [rename_fields(r, mapping) for r in rows]
        examples, skipped, reasons = self._parse_rows(rows, label, seed)
        if not examples:
            detail = f"; first problems: {'; '.join(reasons)}" if reasons else ""
            raise DataError(
                f"{self.name}: no valid examples in {source} ({skipped} malformed rows skipped){detail}"
                + _mapping_hint(rows, reasons, mapping)
            )
        return LoadResult(window(examples, offset, limit, source), skipped, reasons, source)

    def raw_rows(self, split: str, data_path: str | None) -> tuple[list[io.RawRow], str]:
        """Rows and a description of where they came from, following the resolution order."""
        if data_path is not None:
            return io.read_rows(data_path), str(data_path)
        root = io.data_dir()
        if root is not None:
            names = self.local_files.get(split)
            if not names:
                raise DataError(
                    f"{self.name}: no local file layout is known for split {split!r} "
                    f"(known: {', '.join(self.local_files) or 'none'}); pass --data-path FILE"
                )
            path = io.find_in_data_dir(root, self.data_subdir, names, f"{self.name} split {split!r}")
            return io.read_rows(path), str(path)
        if self.hub_id is None:
            raise DataError(f"{self.name} has no hub dataset; {io.OFFLINE_HINT}")
        hub_split = self.hub_split_names.get(split, split)
        source = f"{self.hub_id}" + (f"[{self.hub_config}]" if self.hub_config else "") + f":{hub_split}"
        return io.hub_rows(self.hub_id, self.hub_config, hub_split), source

    def _parse_rows(self, rows: list[io.RawRow], split: str, seed: int):
        examples: list[Example] = []
        skipped, reasons = 0, []
        for raw in rows:
            error = raw.error
            if error is None:
                try:
                    examples.append(self.parse_row(raw.row, raw.index, split, seed))
                except (RowError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
                    # Rows come from files we do not control: any shape error means "skip it".
                    error = str(err) if isinstance(err, RowError) else f"{type(err).__name__}: {err}"
            if error is not None:
                skipped += 1
                if len(reasons) < MAX_REASONS:
                    reasons.append(f"{raw.where}: {error}")
        return examples, skipped, reasons

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        """Turn one raw row into an Example, raising RowError with a reason when it is malformed."""
        raise NotImplementedError

    # ----------------------------------------------------------------- scoring
    def extract_answer(self, text: str, example: Example | None = None) -> str | None:
        """The final answer in ``text`` in canonical form (``example`` narrows valid options)."""
        raise NotImplementedError

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        raise NotImplementedError

    def answer_choices(self, example: Example) -> list[str] | None:
        """The valid answers to ``example`` when there are few (None: any text)."""
        return None

    def training_target(self, example: Example) -> str:
        """The reference answer a trained system learns to write for ``example``: the worked
        solution when the data has one (``meta["solution"]``), then the gold answer in \\boxed{},
        the form :meth:`extract_answer` reads. The one place training targets are made."""
        if self.family == "code":
            raise DataError(f"{self.name}: training targets for code tasks are not defined yet")
        solution = str(example.meta.get("solution") or "")
        solution = _CALCULATOR.sub("", solution).strip()  # GSM8K's "<<48/2=24>>" annotations
        final = f"The final answer is \\boxed{{{example.gold}}}."
        return f"{solution}\n\n{final}" if solution else final

    def chance(self, examples: list[Example]) -> float | None:
        """Expected accuracy of guessing uniformly on ``examples``; None where guessing scores ~0."""
        return None

    def score(self, text: str, example: Example) -> tuple[str | None, bool]:
        """Extract the answer from a model output and compare it: the single evaluation entry point."""
        pred = self.extract_answer(text or "", example)
        return pred, (pred is not None and self.is_correct(pred, example))


def parse_fields(fields: dict[str, str] | str | None) -> dict[str, str]:
    """``"question=prompt,answer=solution"`` (or a mapping) -> {task field: source field}."""
    if not fields:
        return {}
    if isinstance(fields, dict):
        pairs = list(fields.items())
    else:
        pairs = []
        for item in str(fields).split(","):
            task_field, eq, source_field = item.partition("=")
            if not eq or not task_field.strip() or not source_field.strip():
                raise DataError(
                    f"field mapping {item.strip()!r}: expected TASK_FIELD=FILE_FIELD, e.g. --fields question=prompt,answer=solution"
                )
            pairs.append((task_field, source_field))
    return {str(k).strip(): str(v).strip() for k, v in pairs}


def rename_fields(raw: io.RawRow, mapping: dict[str, str]) -> io.RawRow:
    """The row with each mapped source field also under the task's name for it."""
    if raw.row is None:
        return raw
    row = dict(raw.row)
    for task_field, source_field in mapping.items():
        if source_field in raw.row:
            row[task_field] = raw.row[source_field]
    return replace(raw, row=row)


def _mapping_hint(rows: list[io.RawRow], reasons: list[str], mapping: dict[str, str]) -> str:
    """When rows lack the task's fields: the file's own field names and how to map them."""
    missing = sorted({m for r in reasons for m in re.findall(r"missing field '([^']+)'", r)})
    first = next((r.row for r in rows if r.row is not None), None)
    if not missing or first is None:
        return ""
    absent = [m for m in missing if mapping.get(m) and mapping[m] not in first]
    if absent:
        return (
            f"; the mapped fields {[mapping[m] for m in absent]} are not in the file (its fields: {', '.join(first)})"
        )
    example = ",".join(f"{m}=FIELD" for m in missing)
    return f"; the file's fields are {', '.join(first)}: map them to the task's with --fields {example}"


# --------------------------------------------------------------------- registry
_REGISTRY: dict[str, Task] = {}


def _key(name: str) -> str:
    # "synthetic_arith", "Synthetic-Arith" and "arc-easy" all find their task.
    return name.strip().lower().replace("_", "-")


def register_task(cls_or_instance):
    """Register a Task subclass (instantiated with no arguments) or instance; usable as decorator."""
    task = cls_or_instance() if isinstance(cls_or_instance, type) else cls_or_instance
    if not isinstance(task, Task) or not task.name:
        raise TypeError(f"register_task needs a named Task, got {cls_or_instance!r}")
    existing = _REGISTRY.get(_key(task.name))
    if existing is not None and type(existing) is not type(task):
        raise ValueError(f"task name {task.name!r} is already registered by {type(existing).__name__}")
    _REGISTRY[_key(task.name)] = task
    return cls_or_instance


def get_task(name: str) -> Task:
    task = _REGISTRY.get(_key(name))
    if task is None:
        raise UnknownNameError("task", name, [t.name for t in _REGISTRY.values()])
    return task


def list_tasks() -> list[Task]:
    return sorted(_REGISTRY.values(), key=lambda t: t.name)


# --------------------------------------------------------------------- families
class MathTask(Task):
    """Tasks whose gold is a number (or LaTeX expression) compared mathematically."""

    family = "math"
    answer_format = DEFAULT_ANSWER_FORMAT["math"]
    answer_cue = ANSWER_CUE["math"]

    def extract_answer(self, text: str, example: Example | None = None) -> str | None:
        return answers.extract_math_answer(text)

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        return answers.math_equal(prediction, example.gold)


class MultipleChoiceTask(Task):
    """Tasks whose gold is an option letter; ``meta["labels"]``/``meta["choices"]`` list the options."""

    family = "multiple_choice"
    answer_format = DEFAULT_ANSWER_FORMAT["multiple_choice"]
    answer_cue = ANSWER_CUE["multiple_choice"]

    def extract_answer(self, text: str, example: Example | None = None) -> str | None:
        if example is None:
            return answers.extract_choice(text)
        return answers.extract_choice(text, self.answer_choices(example), example.meta.get("choices"))

    def answer_choices(self, example: Example) -> list[str]:
        """The option letters of ``example``."""
        return list(example.meta.get("labels") or answers.LETTERS[: len(example.meta.get("choices", ())) or 5])

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        return prediction is not None and prediction.strip().upper() == example.gold.strip().upper()

    def chance(self, examples: list[Example]) -> float | None:
        counts = [len(ex.meta.get("labels") or ex.meta.get("choices") or ()) for ex in examples]
        return sum(1 / c for c in counts if c) / len(counts) if counts and all(counts) else None


def format_options(stem: str, texts: list[str]) -> tuple[str, list[str]]:
    """Question text with option lines ``A) ...`` and the letters used."""
    letters = list(answers.LETTERS[: len(texts)])
    lines = [stem.strip()] + [f"{letter}) {text}" for letter, text in zip(letters, texts)]
    return "\n".join(lines), letters
