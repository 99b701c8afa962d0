"""Tasks of your own, from a YAML file (``--task my-task.yaml``) or a Python module (``--task
mypackage.tasks:MyTask``), usable by every command.

A task file names its data files per split (paths relative to the YAML file), the answer type
and which fields of the rows hold what::

    name: shop-arith            # optional; default: the file's name
    answer: number              # number | math | choice | code
    files: {test: shop-test.jsonl, train: shop-train.jsonl}
    fields: {question: prompt, answer: result}    # task field: the file's field
    instruction: Put the final number in \\boxed{}.   # optional: what the final agent is told

The task fields per answer type: ``question`` and ``answer`` (number, math: a number or a LaTeX
expression, compared mathematically), plus ``solution`` (optional: a worked solution, the
training target); ``choices`` (choice: a list of option texts; ``answer`` is the letter, the
0-based index or the text of the correct one); for code, ``question`` (the description),
``solution`` (a reference program) and ``tests`` (assert statements, a list or one string).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from diffmas.config import load_yaml
from diffmas.errors import DataError, DiffMASError
from diffmas.tasks import answers, io
from diffmas.tasks.base import (
    Example,
    MathTask,
    MultipleChoiceTask,
    RowError,
    Task,
    format_options,
    get_task,
    register_task,
    rename_fields,
    require,
    require_text,
)
from diffmas.tasks.code import MBPP

ANSWER_TYPES = ("number", "math", "choice", "code")
KEYS = ("name", "answer", "files", "fields", "instruction")


class _FilesMixin:
    """Splits read from the task file's own data files (``--data-path`` still overrides)."""

    files: dict[str, Path]
    fields: dict[str, str]

    def raw_rows(self, split: str, data_path: str | None):
        path = Path(data_path) if data_path is not None else self.files[split]
        rows = io.read_rows(path)
        mapping = {task: source for task, source in self.fields.items() if task != source}
        if mapping:
            rows = [rename_fields(r, mapping) for r in rows]
        return rows, str(path)


class UserMathTask(_FilesMixin, MathTask):
    def __init__(self, numeric: bool):
        self.numeric = numeric

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        question = require_text(row, "question").strip()
        gold = str(require(row, "answer")).strip()
        if self.numeric and answers.parse_number(gold) is None:
            raise RowError(f"answer {gold!r} is not a number (answer type number; use math for expressions)")
        meta = {"solution": str(row.get("solution") or "").strip()}
        return Example(id=f"{self.name}/{split}/{index}", question=question, gold=gold, meta=meta)


class UserChoiceTask(_FilesMixin, MultipleChoiceTask):
    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        stem = require_text(row, "question")
        choices = require(row, "choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise RowError("field 'choices' must be a list of at least two option texts")
        question, letters = format_options(stem, choices)
        gold = _choice_letter(require(row, "answer"), choices, letters)
        meta = {"choices": choices, "labels": letters}
        return Example(id=f"{self.name}/{split}/{index}", question=question, gold=gold, meta=meta)


def _choice_letter(answer: Any, choices: list[str], letters: list[str]) -> str:
    """The correct option's letter from a letter, a 0-based index or the option's text."""
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return letters[answer]
    text = str(answer).strip()
    if text.upper() in letters:
        return text.upper()
    if text.isdigit() and int(text) < len(choices):
        return letters[int(text)]
    if text in choices:
        return letters[choices.index(text)]
    raise RowError(f"answer {answer!r} is neither an option letter, a 0-based index nor an option's text")


def load_task_file(path: str | Path) -> Task:
    """A task from a YAML task file (see the module docstring), registered under its name."""
    path = Path(path)
    spec = load_yaml(path)
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise DiffMASError(f"task file {path}: unknown keys {unknown}; valid: {', '.join(KEYS)}")
    kind = spec.get("answer")
    if kind not in ANSWER_TYPES:
        raise DiffMASError(f"task file {path}: 'answer' must be one of {', '.join(ANSWER_TYPES)}, got {kind!r}")
    files = spec.get("files")
    if not isinstance(files, dict) or not files:
        raise DiffMASError(f"task file {path}: 'files' must map splits to data files, e.g. {{test: data.jsonl}}")
    resolved = {str(split): (path.parent / str(file)).resolve() for split, file in files.items()}
    for split, file in resolved.items():
        if not file.is_file():
            raise DataError(f"task file {path}: the {split} file {file} does not exist")
    fields = {str(k): str(v) for k, v in (spec.get("fields") or {}).items()}
    name = str(spec.get("name") or path.name.split(".")[0])
    task = _build(kind, fields)
    task.name, task.files, task.fields = name, resolved, fields
    task.splits = tuple(resolved)
    task.default_split = "test" if "test" in resolved else next(iter(resolved))
    task.split_aliases, task.local_files, task.hub_id = {}, {}, None
    if spec.get("instruction"):
        task.answer_format = str(spec["instruction"])
    try:
        return register_task(task)
    except ValueError as exc:  # the name of a built-in task
        raise DiffMASError(f"task file {path}: {exc}; give it another name") from None


def _build(kind: str, fields: dict[str, str]) -> Task:
    if kind in ("number", "math"):
        return UserMathTask(numeric=kind == "number")
    if kind == "choice":
        return UserChoiceTask()
    # Code: MBPP's scoring, its row fields fed from the user's names.
    task = UserCodeTask("user-code", None, None, (), 5.0, None, splits=("test",))
    fields.update(
        {"prompt": fields.get("question", "question"), "code": fields.get("solution", "solution"),
         "test_list": fields.get("tests", "tests")}
    )  # fmt: skip
    return task


class UserCodeTask(_FilesMixin, MBPP):
    pass


def load_task_module(spec: str) -> Task:
    """A task defined in Python: ``package.module:Name`` (a Task subclass or instance, or the
    registered name of a task the module registers on import)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DiffMASError(f"--task {spec}: cannot import {module_name!r} ({exc})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        return get_task(attr)
    if isinstance(obj, type) and issubclass(obj, Task) or isinstance(obj, Task):
        task = obj() if isinstance(obj, type) else obj
        register_task(task)
        return task
    raise DiffMASError(f"--task {spec}: {attr} in {module_name} is not a Task subclass or instance")
