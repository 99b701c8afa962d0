"""GPQA-Diamond: 198 graduate-level four-option science questions.

Two row layouts are accepted:

* the official CSV (and the gated hub copy ``Idavidrein/gpqa``, config ``gpqa_diamond``):
  ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``. The correct answer always comes
  first there, so the four options are shuffled, deterministically from ``seed`` and the question
  itself (not its position, so a reordered or filtered file shuffles each question the same way),
  and the letter the correct answer lands on becomes the gold;
* a jsonl with ``question`` (the stem followed by lines ``A) ...`` to ``D) ...``) and ``answer``
  (a letter).

The authors ask that the questions never appear in plain text on the web, so nothing here logs
question text; skip reasons name fields and row positions only.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from diffmas.tasks.base import (
    Example,
    MultipleChoiceTask,
    RowError,
    format_options,
    register_task,
    require,
    require_text,
)

N_OPTIONS = 4
_INCORRECT = tuple(f"Incorrect Answer {i}" for i in range(1, N_OPTIONS))
# "A) text", "(A) text", "A. text", "A: text" at the start of a line.
_OPTION_LINE = re.compile(r"^[ \t]*\(?([A-D])[).:][ \t]*(.*)$", re.MULTILINE)


def shuffled_options(correct: str, incorrect: list[str], seed: int, key: str) -> tuple[list[str], int]:
    """``(options, index of the correct one)``: a fixed permutation for each ``(seed, key)``."""
    # A hash of the key, not hash(): Python salts str hashes per process.
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    options = [correct, *incorrect]
    order = list(range(len(options)))
    rng.shuffle(order)
    return [options[i] for i in order], order.index(0)


def _split_lettered(text: str) -> tuple[str, list[str]]:
    """``(stem, options)`` from a question whose last lines are ``A) ...`` to ``D) ...``."""
    matches = list(_OPTION_LINE.finditer(text))
    # The option block is the last run A, B, C, D (a stem may itself contain a line like "A. ...").
    for start in range(len(matches) - N_OPTIONS, -1, -1):
        run = matches[start : start + N_OPTIONS]
        if [m.group(1) for m in run] == list("ABCD"):
            break
    else:
        raise RowError("question has no option lines A) to D)")
    stem = text[: run[0].start()].strip()
    options = []
    for i, m in enumerate(run):
        end = run[i + 1].start() if i + 1 < len(run) else len(text)
        # An option may continue on the following lines (multi-line formulas).
        options.append((m.group(2) + text[m.end() : end]).strip())
    if not stem:
        raise RowError("question has options but no stem")
    if not all(options):
        raise RowError("an option line is empty")
    return stem, options


@register_task
class GPQADiamond(MultipleChoiceTask):
    name = "gpqa_diamond"
    splits = ("test",)
    split_aliases = {"train": "test", "diamond": "test"}  # the hub calls its only split "train"
    default_split = "test"
    hub_id = "Idavidrein/gpqa"
    hub_config = "gpqa_diamond"
    hub_split_names = {"test": "train"}
    data_subdir = "gpqa_diamond"
    local_files = {"test": ("gpqa_diamond.csv", "gpqa_diamond.jsonl", "test.csv", "test.jsonl")}
    known_sizes = {"test": 198}

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        if "Question" in row or "Correct Answer" in row:
            stem, options, gold_index, shuffled = self._official(row, seed)
        else:
            stem, options = _split_lettered(require_text(row, "question"))
            letter = str(require(row, "answer")).strip().strip("()").upper()
            if letter not in "ABCD" or len(letter) != 1:
                raise RowError(f"answer {row['answer']!r} is not a letter A-D")
            gold_index, shuffled = "ABCD".index(letter), False
        question, letters = format_options(stem, options)
        meta = {"choices": options, "labels": letters, "shuffled": shuffled}
        row_id = str(row.get("Record ID") or row.get("id") or "").strip()
        ex_id = f"{self.name}/{row_id}" if row_id else f"{self.name}/{split}/{index}"
        return Example(id=ex_id, question=question, gold=letters[gold_index], meta=meta)

    def _official(self, row: dict[str, Any], seed: int) -> tuple[str, list[str], int, bool]:
        stem = require_text(row, "Question").strip()
        correct = require_text(row, "Correct Answer").strip()
        incorrect = [require_text(row, key).strip() for key in _INCORRECT]
        if len({correct, *incorrect}) != N_OPTIONS:
            raise RowError("two options have the same text")
        options, gold_index = shuffled_options(correct, incorrect, seed, stem)
        return stem, options, gold_index, True
