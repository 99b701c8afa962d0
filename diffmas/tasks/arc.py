"""AI2 Reasoning Challenge (ARC-Easy / ARC-Challenge): grade-school science multiple choice."""

from __future__ import annotations

from typing import Any

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


def _choices(row: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """``(stem, [(label, text), ...])`` from either the hub or the AI2 jsonl row layout."""
    question = require(row, "question")
    if isinstance(question, dict):  # AI2 jsonl: question {stem, choices: [{text, label}]}
        stem = require_text(question, "stem")
        raw = require(question, "choices")
    else:  # hub: question str, choices {text: [...], label: [...]}
        stem = require_text(row, "question")
        raw = require(row, "choices")
    if isinstance(raw, dict):
        texts, labels = require(raw, "text"), require(raw, "label")
        if len(texts) != len(labels):
            raise RowError(f"{len(texts)} choice texts but {len(labels)} labels")
        pairs = list(zip(labels, texts))
    elif isinstance(raw, list):
        pairs = [(require(c, "label"), require(c, "text")) for c in raw]
    else:
        raise RowError(f"choices is {type(raw).__name__}, expected a list or dict")
    return stem, [(str(label).strip(), str(text).strip()) for label, text in pairs]


class ARC(MultipleChoiceTask):
    splits = ("train", "validation", "test")
    split_aliases = {"dev": "validation", "val": "validation"}
    default_split = "test"
    hub_id = "allenai/ai2_arc"

    def __init__(self, name: str, config: str):
        self.name = name
        self.hub_config = config  # "ARC-Easy" / "ARC-Challenge", also the local file prefix
        self.data_subdir = name
        self.local_files = {
            "train": (f"{config}-Train.jsonl",),
            "validation": (f"{config}-Dev.jsonl",),
            "test": (f"{config}-Test.jsonl",),
        }

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        stem, pairs = _choices(row)
        if not 2 <= len(pairs) <= len(LETTERS):
            raise RowError(f"{len(pairs)} choices; expected 2 to {len(LETTERS)}")
        labels = [label for label, _ in pairs]
        if len(set(labels)) != len(labels):
            raise RowError(f"duplicate choice labels {labels}")
        texts = [text for _, text in pairs]
        question, letters = format_options(stem, texts)
        # Relabel by position so numeric labels (1-4) and letters both become A, B, C...
        to_letter = dict(zip(labels, letters))
        key = str(require(row, "answerKey")).strip()
        if key not in to_letter:
            raise RowError(f"answerKey {key!r} is not one of the labels {labels}")
        meta = {"choices": texts, "labels": letters}
        if labels != letters:
            meta["original_labels"] = labels
        row_id = row.get("id")
        ex_id = f"{self.name}/{row_id}" if row_id else f"{self.name}/{split}/{index}"
        return Example(id=ex_id, question=question, gold=to_letter[key], meta=meta)


register_task(ARC("arc_easy", "ARC-Easy"))
register_task(ARC("arc_challenge", "ARC-Challenge"))
