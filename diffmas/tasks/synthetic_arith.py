"""synthetic-arith: generated multi-step arithmetic word problems with exact integer answers.

Needs no data files, so the whole pipeline (agents, training, evaluation) can be exercised offline.
Each problem is generated independently from ``(split, seed, index)``, so ``limit``/``offset`` only
generate what is asked for, and the same arguments always give the same problems. Train and test
are additionally separated by a hash of the question text, so no question is in both splits for
any pair of seeds.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from diffmas.tasks.answers import format_number, parse_number
from diffmas.tasks.base import Example, LoadResult, MathTask, RowError, register_task, require, require_text, window

SPLIT_SIZES = {"train": 1000, "test": 200}
_TEST_BUCKET = 6  # a question belongs to test iff hash % 6 == 0, to train otherwise

_PEOPLE = [
    ("Maya", "she"),
    ("Leo", "he"),
    ("Priya", "she"),
    ("Omar", "he"),
    ("Sofia", "she"),
    ("Kenji", "he"),
    ("Amara", "she"),
    ("Diego", "he"),
    ("Hana", "she"),
    ("Tom", "he"),
    ("Lena", "she"),
    ("Ravi", "he"),
    ("Zoe", "she"),
    ("Mateo", "he"),
]
_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}  # subject, object, possessive
_ITEMS = [
    "marbles",
    "stickers",
    "seashells",
    "trading cards",
    "pencils",
    "stamps",
    "apples",
    "cookies",
    "coins",
    "beads",
    "books",
    "toy cars",
    "postcards",
    "crayons",
]

_OPENINGS = [
    "{Name} has {n} {items}.",
    "{Name} starts the day with {n} {items}.",
    "{Name}'s collection has {n} {items}.",
    "There are {n} {items} in {Name}'s box.",
]
_QUESTIONS = [
    "How many {items} does {Name} have now?",
    "How many {items} does {Name} end up with?",
    "How many {items} does {p} have at the end?",
]
# Each operation: (sentences for the question, solution step). {a} is the value before, {r} after.
_PHRASES = {
    "add": (
        [
            "{P} buys {k} more.",
            "A friend gives {obj} {k} more {items}.",
            "{P} finds {k} more {items}.",
            "{P} gets {k} {items} as a gift.",
        ],
        "{P} gets {k} more: {a} + {k} = {r}.",
    ),
    "sub": (
        [
            "{P} sells {k} of {poss} {items}.",
            "{P} gives {k} {items} to a classmate.",
            "{P} loses {k} {items}.",
            "{P} uses {k} {items} for a school project.",
        ],
        "{P} has {k} fewer: {a} - {k} = {r}.",
    ),
    "packs": (
        ["{P} buys {m} packs with {k} {items} in each pack.", "{P} receives {m} boxes, each holding {k} {items}."],
        "{P} gets {m} * {k} = {mk} more: {a} + {mk} = {r}.",
    ),
    "mul": (
        [
            "{P} then buys enough to have {k} times as many {items} as before.",
            "After a trade, {p} has {k} times as many {items} as before.",
        ],
        "{P} now has {k} times as many: {a} * {k} = {r}.",
    ),
    "div": (
        [
            "{P} splits all {poss} {items} equally into {k} piles and keeps only one pile.",
            "{P} shares all {poss} {items} equally among {k} people, including {obj}self, and keeps {poss} share.",
        ],
        "{P} keeps one of {k} equal shares: {a} / {k} = {r}.",
    ),
    "half": (
        ["{P} gives away half of {poss} {items}.", "{P} donates half of {poss} {items} to a school."],
        "{P} keeps half: {a} / 2 = {r}.",
    ),
}


def _pick_op(rng: random.Random, cur: int, last: str | None) -> tuple[str, list[int]]:
    """A random operation that keeps every value a positive integer (divisions are exact)."""
    options = ["add", "packs"]
    if cur >= 3:  # sell at least 2 ("loses 1 pencils" reads badly) and keep at least 1
        options.append("sub")
    if cur <= 250:
        options.append("mul")
    divisors = [k for k in range(3, 7) if cur % k == 0]
    if divisors:
        options.append("div")
    if cur % 2 == 0:
        options.append("half")
    if last in options and len(options) > 1:
        options.remove(last)  # avoid "buys 5 more. buys 7 more." runs
    op = rng.choice(options)
    if op == "add":
        return op, [rng.randint(2, 40)]
    if op == "sub":
        return op, [rng.randint(2, min(cur - 1, 60))]
    if op == "packs":
        return op, [rng.randint(2, 5), rng.randint(2, 12)]
    if op == "mul":
        return op, [rng.randint(2, 4)]
    if op == "div":
        return op, [rng.choice(divisors)]
    return op, []


def apply_op(value: int, op: str, args: list[int]) -> int:
    """The value after one recorded operation; the test suite recomputes answers with this too."""
    if op == "add":
        return value + args[0]
    if op == "sub":
        return value - args[0]
    if op == "packs":
        return value + args[0] * args[1]
    if op == "mul":
        return value * args[0]
    if op == "div":
        return value // args[0]
    if op == "half":
        return value // 2
    raise ValueError(f"unknown operation {op!r}")


def _compose(rng: random.Random) -> tuple[str, str, int, int, list[list]]:
    """One problem: (question, solution, answer, start, ops) drawn from ``rng``."""
    name, gender = rng.choice(_PEOPLE)
    subj, obj, poss = _PRONOUNS[gender]
    words = {"Name": name, "p": subj, "P": subj.capitalize(), "obj": obj, "poss": poss, "items": rng.choice(_ITEMS)}
    start = rng.randint(5, 120)
    sentences = [rng.choice(_OPENINGS).format(n=start, **words)]
    steps = [f"{name} starts with {start} {words['items']}."]
    ops: list[list] = []
    cur, last = start, None
    for _ in range(rng.randint(2, 4)):
        op, args = _pick_op(rng, cur, last)
        new = apply_op(cur, op, args)
        k, m = (args[-1] if args else 2), (args[0] if len(args) > 1 else 0)
        fields = dict(words, k=k, m=m, mk=k * m, a=cur, r=new)
        templates, step = _PHRASES[op]
        sentence = rng.choice(templates).format(**fields)
        sentences.append(sentence)
        steps.append(step.format(**fields))
        ops.append([op, *args])
        cur, last = new, op
    sentences.append(rng.choice(_QUESTIONS).format(**words))
    steps.append(f"The answer is {cur}.")
    return " ".join(sentences), "\n".join(steps), cur, start, ops


def _bucket_ok(question: str, split: str) -> bool:
    digest = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    return (digest % _TEST_BUCKET == 0) == (split == "test")


@register_task
class SyntheticArith(MathTask):
    name = "synthetic-arith"
    splits = ("train", "test")
    default_split = "test"

    def generate(self, split: str, seed: int, index: int) -> Example:
        """Problem ``index`` of ``split`` for ``seed``: retried until its text hashes into the split."""
        for attempt in range(1000):
            rng = random.Random(f"{self.name}/{split}/{seed}/{index}/{attempt}")
            question, solution, answer, start, ops = _compose(rng)
            if _bucket_ok(question, split):
                break
        meta = {"solution": solution, "start": start, "ops": ops, "seed": seed}
        return Example(id=f"{self.name}/{split}/{seed}/{index}", question=question, gold=str(answer), meta=meta)

    def load(
        self,
        split: str | None = None,
        data_path: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        offset: int | None = None,
        fields: dict[str, str] | str | None = None,
    ) -> LoadResult:
        if data_path is not None:  # a saved set of problems: read like any other file
            return super().load(split, data_path, limit, seed, offset, fields)
        resolved = self.resolve_split(split)
        indices = window(range(SPLIT_SIZES[resolved]), offset, limit, f"{self.name} split {resolved!r}")
        examples = [self.generate(resolved, seed, i) for i in indices]
        return LoadResult(examples, 0, [], f"generated:{self.name}/{resolved}/seed={seed}")

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        question = require_text(row, "question").strip()
        value = parse_number(str(require(row, "answer")))
        if value is None:
            raise RowError(f"answer {row['answer']!r} is not a number")
        row_id = row.get("id") or f"{self.name}/{split}/{index}"
        meta = {k: row[k] for k in ("solution", "start", "ops") if k in row}
        return Example(id=str(row_id), question=question, gold=format_number(value), meta=meta)
