"""GSM8K: grade-school math word problems with integer answers (``#### <number>`` gold lines)."""

from __future__ import annotations

from typing import Any

from diffmas.tasks.answers import format_number, parse_number
from diffmas.tasks.base import Example, MathTask, RowError, register_task, require_text


def split_solution(answer: str) -> tuple[str, str]:
    """``(worked solution, gold number string)`` from a GSM8K answer ending in ``#### 1,000``."""
    body, sep, final = answer.rpartition("####")
    if not sep:
        raise RowError("answer has no '#### <number>' line")
    final = final.strip().splitlines()[0] if final.strip() else ""
    value = parse_number(final)
    if value is None:
        raise RowError(f"gold {final!r} after '####' is not a number")
    return body.rstrip(), format_number(value)


@register_task
class GSM8K(MathTask):
    name = "gsm8k"
    splits = ("train", "test")
    default_split = "test"
    hub_id = "openai/gsm8k"
    hub_config = "main"
    data_subdir = "gsm8k"
    local_files = {"train": ("train.jsonl",), "test": ("test.jsonl",)}

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        question = require_text(row, "question").strip()
        solution, gold = split_solution(require_text(row, "answer"))
        # meta["solution"] is the worked solution without "####": a ready training target.
        return Example(id=f"{self.name}/{split}/{index}", question=question, gold=gold, meta={"solution": solution})
