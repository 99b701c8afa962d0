"""MedQA (USMLE): four-option (sometimes five-option) medical licensing exam questions.

Row layouts accepted:

* jsonl as in the MedQA release and the hub copy ``GBaker/MedQA-USMLE-4-options``:
  ``question``, ``options {"A": text, ...}``, ``answer`` (the option text), ``answer_idx`` (letter);
* the 300-question json used by LatentMAS: a list of ``{question, options: ["A. text", ...],
  answer: <option text>}`` (its question key may be ``query``, and its question text may already
  end with the option lines; they are then not repeated).

Splits: ``dev`` is the shared development file (the US test set minus the questions held out for
evaluation); ``test`` is the held-out evaluation file or the full US test set; ``train`` and
``validation`` are the official ones.
"""

from __future__ import annotations

import re
from typing import Any

from diffmas.errors import DataError
from diffmas.tasks import io
from diffmas.tasks.answers import LETTERS
from diffmas.tasks.base import (
    Example,
    MultipleChoiceTask,
    RowError,
    format_options,
    register_task,
    require,
    require_text,
)

_LETTER_PREFIX = re.compile(r"^\s*\(?([A-J])\s*[.):]\s*")


def _norm(text: str) -> str:
    return " ".join(str(text).split()).strip(" .").lower()


def _options(raw: Any) -> tuple[list[str], list[str]]:
    """``(letters, texts)`` from ``{"A": text}`` or ``["A. text", ...]`` (or bare texts)."""
    if isinstance(raw, dict):
        letters = [str(k).strip().upper() for k in raw]
        if letters != list(LETTERS[: len(letters)]):
            raise RowError(f"option keys {letters} are not A, B, C, ... in order")
        texts = [str(v).strip() for v in raw.values()]
    elif isinstance(raw, list):
        texts = []
        for i, item in enumerate(raw):
            text = str(item)
            m = _LETTER_PREFIX.match(text)
            if m:  # "A. text": the written letter must be the position's letter
                if m.group(1) != LETTERS[i]:
                    raise RowError(f"option {i + 1} is labelled {m.group(1)!r}, expected {LETTERS[i]!r}")
                text = text[m.end() :]
            texts.append(text.strip())
        letters = list(LETTERS[: len(texts)])
    else:
        raise RowError(f"options is {type(raw).__name__}, expected a dict or a list")
    if not 2 <= len(texts) <= len(LETTERS) or not all(texts):
        raise RowError(f"expected 2 to {len(LETTERS)} non-empty options, got {len(texts)}")
    return letters, texts


def _strip_option_block(stem: str, texts: list[str]) -> str:
    """The stem without a trailing copy of the options (``A. text`` lines), when it has one."""
    first = re.search(rf"^\s*\(?A\s*[.):]\s*{re.escape(texts[0])}", stem, re.MULTILINE)
    if first and all(_norm(t) in _norm(stem[first.start() :]) for t in texts):
        return stem[: first.start()].strip() or stem
    return stem


@register_task
class MedQA(MultipleChoiceTask):
    name = "medqa"
    splits = ("test", "dev", "train", "validation")
    split_aliases = {"val": "validation"}
    default_split = "test"
    hub_id = "GBaker/MedQA-USMLE-4-options"  # same row layout as the jsonl; splits train and test
    data_subdir = "medqa"
    local_files = {
        "test": ("medqa.json", "test.jsonl", "us_test.jsonl"),
        "dev": ("us_test_minus_heldout.jsonl", "dev.jsonl"),
        "train": ("train.jsonl", "us_train.jsonl"),
        "validation": ("validation.jsonl", "us_dev.jsonl"),
    }
    known_sizes = {"test": 1273, "train": 10178, "validation": 1272}

    def raw_rows(self, split: str, data_path: str | None) -> tuple[list[io.RawRow], str]:
        # "dev" is carved out of the test set locally; the hub has no such split.
        if split == "dev" and data_path is None and io.data_dir() is None:
            raise DataError(
                f"{self.name}: the dev split (US test minus the held-out questions) is local only; {io.OFFLINE_HINT}"
            )
        return super().raw_rows(split, data_path)

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        key = "question" if "question" in row else "query"
        stem = require_text(row, key).strip()
        letters, texts = _options(require(row, "options"))
        stem = _strip_option_block(stem, texts)
        gold = self._gold(row, letters, texts)
        question, letters = format_options(stem, texts)
        meta: dict[str, Any] = {"choices": texts, "labels": letters}
        if row.get("meta_info"):
            meta["step"] = str(row["meta_info"])
        row_id = str(row.get("id") or "").strip()
        ex_id = f"{self.name}/{row_id}" if row_id else f"{self.name}/{split}/{index}"
        return Example(id=ex_id, question=question, gold=gold, meta=meta)

    @staticmethod
    def _gold(row: dict[str, Any], letters: list[str], texts: list[str]) -> str:
        """The right letter from ``answer_idx`` and/or ``answer`` text; they must agree."""
        by_text = None
        answer = row.get("answer")
        if isinstance(answer, str) and answer.strip():
            m = _LETTER_PREFIX.match(answer)
            body = answer[m.end() :] if m else answer  # "B. text" as well as "text"
            hits = [letters[i] for i, t in enumerate(texts) if _norm(t) == _norm(body)]
            if len(hits) > 1:
                raise RowError("the answer text matches several options")
            by_text = hits[0] if hits else None
            if by_text is None and answer.strip().upper() in letters:
                by_text = answer.strip().upper()  # a bare letter as the answer
        idx = row.get("answer_idx")
        by_idx = str(idx).strip().upper() if idx is not None and str(idx).strip() else None
        if by_idx is not None and by_idx not in letters:
            raise RowError(f"answer_idx {idx!r} is not one of {letters}")
        if by_idx and by_text and by_idx != by_text:
            raise RowError(f"answer_idx {by_idx} disagrees with the answer text (option {by_text})")
        gold = by_idx or by_text
        if gold is None:
            raise RowError("missing field 'answer'" if answer is None else "the answer matches no option")
        return gold
