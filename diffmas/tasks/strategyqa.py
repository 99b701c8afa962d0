"""StrategyQA: yes/no questions that need an implicit chain of facts ("Could a llama birth twice
during the War in Vietnam?").

Posed as a two-option multiple-choice question (``A) Yes`` / ``B) No``) so it shares the
multiple-choice family's prompts and letter scoring; a reply that boxes or states "yes"/"no"
instead of a letter is read too. Row layouts accepted:

* BIG-bench ``task.json``: ``{"examples": [{input, target_scores: {"Yes": 1, "No": 0}, target}]}``
  (``target`` is "Yes. <explanation>", kept as the worked solution);
* the hub's BIG-bench copy ``tasksource/bigbench`` (config ``strategyqa``): ``inputs``,
  ``targets``, ``multiple_choice_targets``, ``multiple_choice_scores``;
* the original StrategyQA json: ``question``, ``answer`` (a boolean).

BIG-bench evaluates on every example, so the single split ``test`` is the whole task file (on the
hub: its train and validation splits together).
"""

from __future__ import annotations

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

OPTIONS = ["Yes", "No"]
_WORD_ANSWER = re.compile(r"\banswer\b\s*(?:is|:|=)?\s*[:*\s]*\b(yes|no)\b", re.IGNORECASE)
_PROMPT_MARKS = re.compile(r"^\s*Q:\s*|\s*A:\s*$")  # BIG-bench's "Q: ... A:" framing


def _scores(row: dict[str, Any]) -> dict[str, float]:
    """``{"yes": score, "no": score}`` from either BIG-bench layout."""
    if "target_scores" in row:
        raw = require(row, "target_scores")
        if not isinstance(raw, dict):
            raise RowError(f"target_scores is {type(raw).__name__}, expected an object")
        pairs = list(raw.items())
    else:
        targets, scores = require(row, "multiple_choice_targets"), require(row, "multiple_choice_scores")
        if len(targets) != len(scores):
            raise RowError(f"{len(targets)} choice targets but {len(scores)} scores")
        pairs = list(zip(targets, scores))
    scores_by = {str(k).strip().strip(".").lower(): float(v) for k, v in pairs}
    if set(scores_by) != {"yes", "no"}:
        raise RowError(f"target scores are for {sorted(scores_by)}, expected Yes and No")
    return scores_by


def _yes_no(row: dict[str, Any]) -> tuple[bool, str]:
    """``(answer is yes, explanation)`` from any accepted layout."""
    if "target_scores" in row or "multiple_choice_scores" in row:
        scores = _scores(row)
        if scores["yes"] == scores["no"]:
            raise RowError("Yes and No have the same target score")
        yes = scores["yes"] > scores["no"]
        target = row.get("target", row.get("targets"))
        if isinstance(target, list):
            target = target[0] if target else ""
        explanation = str(target or "").strip()
        first = re.match(r"(yes|no)\b", explanation, re.IGNORECASE)
        if first and (first.group(1).lower() == "yes") != yes:
            raise RowError("target text and target_scores disagree")
        return yes, explanation
    answer = require(row, "answer")
    if isinstance(answer, str) and answer.strip().lower() in ("yes", "no", "true", "false"):
        answer = answer.strip().lower() in ("yes", "true")
    if not isinstance(answer, bool):
        raise RowError(f"answer {answer!r} is not yes/no")
    facts = row.get("facts")
    return answer, " ".join(facts) if isinstance(facts, list) else ""


@register_task
class StrategyQA(MultipleChoiceTask):
    name = "strategyqa"
    answer_format = "Put the letter of the correct option in \\boxed{}: \\boxed{A} for Yes, \\boxed{B} for No."
    splits = ("test",)
    default_split = "test"
    hub_id = "tasksource/bigbench"
    hub_config = "strategyqa"
    hub_split_names = {"test": "train+validation"}  # datasets' split arithmetic: all examples
    data_subdir = "strategyqa"
    local_files = {"test": ("task.json", "strategyqa.json", "test.jsonl")}

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        key = next((k for k in ("input", "inputs", "question") if k in row), "input")
        stem = _PROMPT_MARKS.sub("", require_text(row, key)).strip()
        if not stem:
            raise RowError(f"field {key!r} is empty")
        yes, explanation = _yes_no(row)
        question, letters = format_options(stem, OPTIONS)
        meta: dict[str, Any] = {"choices": list(OPTIONS), "labels": letters}
        if explanation:
            meta["solution"] = explanation
        row_id = next((str(row[k]).strip() for k in ("qid", "idx") if row.get(k) is not None), "")
        ex_id = f"{self.name}/{row_id}" if row_id else f"{self.name}/{split}/{index}"
        return Example(id=ex_id, question=question, gold="A" if yes else "B", meta=meta)

    def extract_answer(self, text: str, example: Example | None = None) -> str | None:
        found = super().extract_answer(text, example)
        if found is not None:
            return found
        # Models often answer the question itself ("The answer is yes") rather than its letter.
        words = list(_WORD_ANSWER.finditer(text or ""))
        if words:
            return "A" if words[-1].group(1).lower() == "yes" else "B"
        alone = (text or "").strip().strip("*.!").lower()
        return {"yes": "A", "no": "B"}.get(alone)
