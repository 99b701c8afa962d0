"""WinoGrande: fill the blank (``_``) in a sentence with one of two options.

Posed as a two-option multiple-choice question (``A)`` = option1, ``B)`` = option2) so it uses the
multiple-choice family's prompts and letter scoring like every other choice task; the data's
answer ``"1"``/``"2"`` becomes ``A``/``B``. Row layout (hub ``allenai/winogrande`` and the local
jsonl release): ``qID``, ``sentence``, ``option1``, ``option2``, ``answer``. Test rows carry no
answer and are skipped with that reason.
"""

from __future__ import annotations

from typing import Any

from diffmas.tasks.base import Example, MultipleChoiceTask, RowError, format_options, register_task, require_text

_INSTRUCTION = "Which option correctly fills the blank (_) in the sentence?"


@register_task
class WinoGrande(MultipleChoiceTask):
    name = "winogrande"
    splits = ("validation", "train", "test")
    split_aliases = {"dev": "validation", "val": "validation"}
    default_split = "validation"
    hub_id = "allenai/winogrande"
    hub_config = "winogrande_xl"  # the largest training set; validation and test are shared by all sizes
    data_subdir = "winogrande"
    local_files = {
        "validation": ("dev.jsonl", "validation.jsonl"),
        "train": ("train_xl.jsonl", "train.jsonl"),
        "test": ("test.jsonl",),
    }
    known_sizes = {"train": 40398, "validation": 1267, "test": 1767}

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        sentence = require_text(row, "sentence").strip()
        if "_" not in sentence:
            raise RowError("sentence has no blank '_'")
        options = [require_text(row, "option1").strip(), require_text(row, "option2").strip()]
        answer = str(row.get("answer") if row.get("answer") is not None else "").strip()
        if answer not in ("1", "2"):
            raise RowError(f"answer {answer!r} is not 1 or 2" if answer else "no answer (unlabelled row)")
        question, letters = format_options(f"{_INSTRUCTION}\n{sentence}", options)
        row_id = str(row.get("qID") or "").strip()
        ex_id = f"{self.name}/{row_id}" if row_id else f"{self.name}/{split}/{index}"
        return Example(
            id=ex_id, question=question, gold=letters[int(answer) - 1], meta={"choices": options, "labels": letters}
        )
