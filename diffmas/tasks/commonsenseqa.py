"""CommonsenseQA: five-option everyday-knowledge questions.

Its rows have exactly ARC's two layouts (local AI2 jsonl: ``question {stem, choices: [{label,
text}]}``, ``answerKey``; hub ``tau/commonsense_qa``: ``question`` str, ``choices {label, text}``,
``answerKey``), so parsing is inherited from :class:`diffmas.tasks.arc.ARC`; only where the data
lives differs. The hub's test split has no answer keys, so it cannot be scored (every row is
skipped with that reason). ``dev`` is the shared development file: the first 300 questions of the
validation split.
"""

from __future__ import annotations

from diffmas.tasks.arc import ARC
from diffmas.tasks.base import register_task


class CommonsenseQA(ARC):
    splits = ("validation", "dev", "train", "test")
    split_aliases = {"val": "validation"}
    default_split = "validation"
    hub_id = "tau/commonsense_qa"
    hub_split_names = {"dev": "validation[:300]"}  # datasets' slice syntax: the same rows as dev300
    known_sizes = {"train": 9741, "validation": 1221, "test": 1140, "dev": 300}

    def __init__(self) -> None:  # ARC's __init__ derives names from an ARC config; none here
        self.name = "commonsenseqa"
        self.hub_config = None
        self.data_subdir = "commonsenseqa"
        self.local_files = {
            "validation": ("dev_rand_split.jsonl", "validation.jsonl"),
            "dev": ("dev300.jsonl",),
            "train": ("train_rand_split.jsonl", "train.jsonl"),
            "test": ("test_rand_split_no_answers.jsonl", "test.jsonl"),
        }


register_task(CommonsenseQA())
