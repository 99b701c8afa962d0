"""Tests for the added benchmarks: MATH-500, AIME 2024/2025, GPQA-Diamond, MedQA, CommonsenseQA,
StrategyQA and WinoGrande. Every local format gets a tiny fixture in tmp_path (no data file is
ever copied into the repository); the shared development files are loaded when present.

GPQA fixtures are made-up questions, and no test prints question text (its authors ask that real
GPQA questions never appear in plain text).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import diffmas.tasks.aime  # noqa: E402,F401  (registers the tasks)
import diffmas.tasks.commonsenseqa  # noqa: E402,F401
import diffmas.tasks.gpqa  # noqa: E402,F401
import diffmas.tasks.math500  # noqa: E402,F401
import diffmas.tasks.medqa  # noqa: E402,F401
import diffmas.tasks.strategyqa  # noqa: E402,F401
import diffmas.tasks.winogrande  # noqa: E402,F401
from diffmas.cli import tasks as tasks_cli  # noqa: E402
from diffmas.errors import DataError  # noqa: E402
from diffmas.tasks import get_task, io  # noqa: E402
from diffmas.tasks.answers import math_equal  # noqa: E402
from diffmas.tasks.gpqa import shuffled_options  # noqa: E402

SHARED = Path(os.environ.get("DIFFMAS_TEST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NEW_TASKS = {
    "math500": "math",
    "aime2024": "math",
    "aime2025": "math",
    "gpqa_diamond": "multiple_choice",
    "medqa": "multiple_choice",
    "commonsenseqa": "multiple_choice",
    "strategyqa": "multiple_choice",
    "winogrande": "multiple_choice",
}


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch):
    monkeypatch.delenv("DIFFMAS_DATA_DIR", raising=False)


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace the hub reader: ``fake_hub[hub_id] = rows``; ``fake_hub.calls`` records requests."""

    class Hub(dict):
        def __repr__(self) -> str:  # failure reports must not dump question text
            return f"<fake hub: {sorted(self)}>"

    hub = Hub()
    hub.calls = []

    def hub_rows(hub_id, config, split):
        hub.calls.append((hub_id, config, split))
        return [io.RawRow(i, f"row {i + 1}", r) for i, r in enumerate(hub[hub_id])]

    monkeypatch.setattr(io, "hub_rows", hub_rows)
    return hub


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def load(name: str, path: Path, split: str | None = None, **kw):
    return get_task(name).load(split, data_path=str(path), **kw)


def test_registered_with_family_and_boxed_answer_format():
    for name, family in NEW_TASKS.items():
        task = get_task(name)
        assert task.family == family and "boxed" in task.answer_format, name
        assert task.hub_id and task.local_files and task.data_subdir == name, name
        assert task.default_split in task.splits


# ----------------------------------------------------------------------- MATH-500
def math_row(answer, uid="test/algebra/1.json", **extra):
    return {
        "problem": "Compute it.",
        "solution": f"So it is $\\boxed{{{answer}}}$.",
        "answer": answer,
        "subject": "Algebra",
        "level": 2,
        "unique_id": uid,
        **extra,
    }


@pytest.mark.parametrize(
    "gold, reply, correct",
    [
        (r"\frac{1}{2}", r"\boxed{0.5}", True),
        ("0.5", r"\boxed{\dfrac{1}{2}}", True),
        (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3, \frac{\pi}{2})}", True),
        (r"(3, \frac{\pi}{2})", r"\boxed{\left(3,\frac{\pi}{2}\right)}", True),
        (r"(3, \frac{\pi}{2})", r"\boxed{(\frac{\pi}{2}, 3)}", False),
        (r"\frac{14}{3}", r"\boxed{4.67}", False),
        (r"3\sqrt{13}", r"\boxed{\sqrt{117}}", True),
        (
            r"\begin{pmatrix} -1/3 \\ 2/3 \end{pmatrix}",
            r"\boxed{\begin{pmatrix} -\frac{1}{3} \\ \frac{2}{3} \end{pmatrix}}",
            True,
        ),
        (r"\begin{pmatrix} -1/3 \\ 2/3 \end{pmatrix}", r"\boxed{\begin{pmatrix} 1/3 \\ 2/3 \end{pmatrix}}", False),
        ("p - q", r"\boxed{-q + p}", True),
        ("p - q", r"\boxed{q - p}", False),
        ("9", "no box, the answer is 9", True),
    ],
)
def test_math500_answers_compared_mathematically(tmp_path, gold, reply, correct):
    ex = load("math500", write_jsonl(tmp_path / "m.jsonl", [math_row(gold)])).examples[0]
    assert ex.gold == gold
    assert get_task("math500").score(reply, ex)[1] is correct


def test_math500_rows_ids_meta_and_malformed(tmp_path):
    rows = [
        math_row("5", "test/algebra/7.json"),
        {"problem": "No answer."},
        math_row("  "),
        {"answer": "3"},
        "not json",
        math_row(r"\frac{3}{56}", ""),
    ]
    res = load("math500", write_jsonl(tmp_path / "m.jsonl", rows), "test")
    assert [e.id for e in res.examples] == ["math500/test/algebra/7.json", "math500/test/5"]
    assert res.examples[0].meta == {"solution": r"So it is $\boxed{5}$.", "subject": "Algebra", "level": 2}
    assert res.skipped == 4
    assert res.skipped_reasons[:3] == [
        "line 2: missing field 'answer'",
        "line 3: field 'answer' is empty",
        "line 4: missing field 'problem'",
    ]
    assert res.skipped_reasons[3].startswith("line 5: invalid JSON")


def test_math500_data_dir_and_hub(tmp_path, monkeypatch, fake_hub):
    write_jsonl(tmp_path / "math500" / "dev100.jsonl", [math_row("1"), math_row("2")])
    monkeypatch.setenv("DIFFMAS_DATA_DIR", str(tmp_path))
    res = get_task("math500").load("dev")
    assert [e.gold for e in res.examples] == ["1", "2"] and res.source.endswith("dev100.jsonl")
    with pytest.raises(DataError, match=r"math500[/\\]test\.jsonl.*contains: dev100\.jsonl"):
        get_task("math500").load("test")
    monkeypatch.delenv("DIFFMAS_DATA_DIR")
    fake_hub["HuggingFaceH4/MATH-500"] = [math_row("7")]
    assert get_task("math500").load("dev").examples[0].gold == "7"
    get_task("math500").load("test")
    assert fake_hub.calls == [("HuggingFaceH4/MATH-500", None, "test[:100]"), ("HuggingFaceH4/MATH-500", None, "test")]


# ----------------------------------------------------------------------- AIME
def test_aime2024_jsonl_leading_zeros_and_integer_comparison(tmp_path):
    rows = [
        {"id": 60, "problem": "Find m+n.", "solution": "Work.", "answer": "025", "url": "https://x/1"},
        {"id": 61, "problem": "Find k.", "solution": "More.", "answer": "0", "url": "https://x/2"},
        {"id": 62, "problem": "Find j.", "solution": "", "answer": 204, "url": "https://x/3"},
    ]
    res = load("aime2024", write_jsonl(tmp_path / "aime_2024.jsonl", rows))
    task = get_task("aime2024")
    a, zero, c = res.examples
    assert (a.id, a.gold, a.meta["solution"], a.meta["url"]) == ("aime2024/60", "25", "Work.", "https://x/1")
    assert (zero.gold, c.gold, "solution" in c.meta) == ("0", "204", False)
    for reply in (r"\boxed{25}", r"\boxed{025}", r"\boxed{25.0}", "The answer is 025.", r"\boxed{m+n = 25}"):
        assert task.score(reply, a)[1], reply
    for reply in (r"\boxed{26}", r"\boxed{25.5}", r"\boxed{\frac{51}{2}}", r"\boxed{\sqrt{625}}", "no idea"):
        assert not task.score(reply, a)[1], reply
    assert task.score(r"\boxed{000}", zero)[1] and task.score(r"\boxed{0204}", c)[1]
    # Compared as integers even when handed raw strings, not only after extraction canonicalises them.
    assert task.is_correct("025", a) and task.is_correct(" 25.0 ", a) and task.is_correct("000", zero)
    assert not any(task.is_correct(p, a) for p in ("2 5", "25.5", "", None, "twenty-five"))
    assert task.training_target(a).endswith(r"\boxed{25}.") and task.training_target(a).startswith("Work.")


def test_aime2025_question_answer_jsonl_and_malformed(tmp_path):
    rows = [
        {"question": "Find the sum.", "answer": "070"},
        {"question": "Too big.", "answer": "1000"},
        {"question": "Fraction.", "answer": "3/2"},
        {"question": "Negative.", "answer": "-4"},
        {"question": "Word.", "answer": "seven"},
        {"question": "Missing."},
        {"question": "Flag.", "answer": True},
        {"problem": "Hub layout.", "answer": "9"},
    ]
    res = load("aime2025", write_jsonl(tmp_path / "aime2025.jsonl", rows), "test")
    assert [(e.id, e.gold) for e in res.examples] == [("aime2025/test/0", "70"), ("aime2025/test/7", "9")]
    assert res.skipped == 6
    assert res.skipped_reasons[0] == "line 2: answer '1000' is not an integer from 0 to 999"
    assert "'3/2'" in res.skipped_reasons[1] and "'-4'" in res.skipped_reasons[2]
    assert res.skipped_reasons[4] == "line 6: missing field 'answer'"
    assert get_task("aime2025").score(r"\boxed{70}", res.examples[0]) == ("70", True)


def test_aime_hub_ids_and_split_names(fake_hub):
    fake_hub["HuggingFaceH4/aime_2024"] = [{"id": 1, "problem": "P", "solution": "S", "answer": "001", "url": "u"}]
    fake_hub["yentinglin/aime_2025"] = [{"problem": "P", "answer": "42"}]
    assert get_task("aime2024").load().examples[0].gold == "1"
    assert get_task("aime2025").load("train").examples[0].gold == "42"  # "train" is an alias of test
    assert fake_hub.calls == [("HuggingFaceH4/aime_2024", None, "train"), ("yentinglin/aime_2025", None, "train")]


# ----------------------------------------------------------------------- GPQA-Diamond
GPQA_COLUMNS = [
    "Pre-Revision Question",
    "Question",
    "Correct Answer",
    "Incorrect Answer 1",
    "Incorrect Answer 2",
    "Incorrect Answer 3",
    "Record ID",
    "High-level domain",
]


def gpqa_record(i: int, **overrides) -> dict:
    rec = {
        "Pre-Revision Question": "old",
        "Question": f"Made-up question number {i}?",
        "Correct Answer": f"right {i}",
        "Incorrect Answer 1": f"wrong a{i}",
        "Incorrect Answer 2": f"wrong b{i}",
        "Incorrect Answer 3": f"wrong c{i}",
        "Record ID": f"rec{i}",
        "High-level domain": "Physics",
    }
    rec.update(overrides)
    return rec


def write_gpqa_csv(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=GPQA_COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    return path


def test_gpqa_csv_shuffle_is_deterministic_and_records_the_right_letter(tmp_path):
    records = [gpqa_record(i) for i in range(24)]
    records[3]["Question"] = "A question\nover two lines, with a comma?"  # quoted multi-line CSV cell
    path = write_gpqa_csv(tmp_path / "gpqa_diamond.csv", records)
    task = get_task("gpqa_diamond")
    first = task.load(data_path=str(path))
    assert first.skipped == 0 and len(first.examples) == 24
    for rec, ex in zip(records, first.examples):
        assert ex.id == f"gpqa_diamond/{rec['Record ID']}" and ex.meta["shuffled"] is True
        assert sorted(ex.meta["choices"]) == sorted(rec[k] for k in GPQA_COLUMNS[2:6])
        assert ex.meta["choices"]["ABCD".index(ex.gold)] == rec["Correct Answer"], ex.id
        assert f"{ex.gold}) {rec['Correct Answer']}" in ex.question.splitlines(), ex.id
        assert task.score(rf"\boxed{{{ex.gold}}}", ex)[1] and task.score(rf"\boxed{{{rec['Correct Answer']}}}", ex)[1]
    assert len({ex.gold for ex in first.examples}) >= 3  # not always "A", where the file puts it
    assert task.load(data_path=str(path)).examples == first.examples  # same seed, same options
    # The permutation belongs to the question, not its position in the file.
    reversed_path = write_gpqa_csv(tmp_path / "rev.csv", records[::-1])
    assert {e.id: e.gold for e in task.load(data_path=str(reversed_path)).examples} == {
        e.id: e.gold for e in first.examples
    }
    other = task.load(data_path=str(path), seed=1).examples
    assert [e.meta["choices"] for e in other] != [e.meta["choices"] for e in first.examples]
    assert all(e.meta["choices"]["ABCD".index(e.gold)].startswith("right") for e in other)


def test_shuffled_options_fixed_values():
    opts, idx = shuffled_options("c", ["w1", "w2", "w3"], 0, "key")
    assert (opts, idx) == shuffled_options("c", ["w1", "w2", "w3"], 0, "key")
    assert opts[idx] == "c" and sorted(opts) == ["c", "w1", "w2", "w3"]
    assert len({shuffled_options("c", ["w1", "w2", "w3"], 0, f"k{i}")[1] for i in range(40)}) == 4


def test_gpqa_csv_malformed_rows_skipped(tmp_path):
    records = [
        gpqa_record(0),
        gpqa_record(1, **{"Incorrect Answer 3": ""}),
        gpqa_record(2, **{"Correct Answer": "wrong a2"}),
        gpqa_record(3, Question="  "),
    ]
    res = load("gpqa_diamond", write_gpqa_csv(tmp_path / "g.csv", records))
    assert [e.id for e in res.examples] == ["gpqa_diamond/rec0"] and res.skipped == 3
    assert res.skipped_reasons == [
        "row 3: field 'Incorrect Answer 3' is empty",
        "row 4: two options have the same text",
        "row 5: field 'Question' is empty",
    ]


def test_gpqa_jsonl_with_lettered_options(tmp_path):
    rows = [
        {
            "question": "Stem line one.\nA. not an option, part of the stem\nWhich holds?\nA) first\nB) second\n"
            "C) x = 1\n   continued\nD) fourth",
            "answer": "C",
        },
        {"question": "Short stem?\n(A) p\n(B) q\n(C) r\n(D) s", "answer": "(b)"},
        {"question": "No options here", "answer": "A"},
        {"question": "Q?\nA) 1\nB) 2\nC) 3\nD) 4", "answer": "E"},
    ]
    res = load("gpqa_diamond", write_jsonl(tmp_path / "gpqa.jsonl", rows))
    a, b = res.examples
    assert a.meta["choices"] == ["first", "second", "x = 1\n   continued", "fourth"] and a.gold == "C"
    assert a.question.startswith("Stem line one.\nA. not an option, part of the stem\nWhich holds?\nA) first")
    assert (b.gold, b.meta["choices"], b.meta["shuffled"]) == ("B", ["p", "q", "r", "s"], False)
    assert res.skipped == 2 and "no option lines" in res.skipped_reasons[0] and "'E'" in res.skipped_reasons[1]
    assert get_task("gpqa_diamond").score("The answer is (C).", a) == ("C", True)


def test_gpqa_hub_and_data_dir(tmp_path, monkeypatch, fake_hub):
    fake_hub["Idavidrein/gpqa"] = [gpqa_record(0)]
    ex = get_task("gpqa_diamond").load().examples[0]
    assert ex.meta["choices"][ord(ex.gold) - ord("A")] == "right 0"
    assert fake_hub.calls == [("Idavidrein/gpqa", "gpqa_diamond", "train")]
    write_gpqa_csv(tmp_path / "gpqa_diamond" / "gpqa_diamond.csv", [gpqa_record(1), gpqa_record(2)])
    monkeypatch.setenv("DIFFMAS_DATA_DIR", str(tmp_path))
    assert len(get_task("gpqa_diamond").load("train").examples) == 2


# ----------------------------------------------------------------------- MedQA
def medqa_row(gold="B", **overrides):
    options = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin", "D": "Observation"}
    row = {
        "question": "A 40-year-old man has chest pain. What is the next step?",
        "answer": options[gold],
        "options": options,
        "meta_info": "step1",
        "answer_idx": gold,
    }
    row.update(overrides)
    return row


def test_medqa_jsonl_format(tmp_path):
    rows = [
        medqa_row("B"),
        medqa_row("D"),
        medqa_row("A", answer="Heparin"),
        medqa_row(answer_idx="E", answer="Nothing"),
        medqa_row("C", options={"A": "x", "C": "y"}),
        medqa_row("A", answer_idx=None),
    ]
    res = load("medqa", write_jsonl(tmp_path / "medqa.jsonl", rows), "dev")
    assert [(e.id, e.gold) for e in res.examples] == [("medqa/dev/0", "B"), ("medqa/dev/1", "D"), ("medqa/dev/5", "A")]
    ex = res.examples[0]
    assert ex.question.splitlines()[1:] == ["A) Aspirin", "B) Heparin", "C) Warfarin", "D) Observation"]
    assert ex.meta["choices"][1] == "Heparin" and ex.meta["step"] == "step1"
    assert res.skipped_reasons == [
        "line 3: answer_idx A disagrees with the answer text (option B)",
        "line 4: answer_idx 'E' is not one of ['A', 'B', 'C', 'D']",
        "line 5: option keys ['A', 'C'] are not A, B, C, ... in order",
    ]
    assert get_task("medqa").score(r"\boxed{heparin}", ex) == ("B", True)


def test_medqa_latentmas_json_list(tmp_path):
    opts = ["A. Aspirin", "B. Heparin", "C. Warfarin", "D. Observation"]
    items = [
        {"question": "Which drug?", "options": opts, "answer": "Warfarin", "id": "q1"},
        {
            "query": "Which drug now?\nA. Aspirin\nB. Heparin\nC. Warfarin\nD. Observation",
            "options": opts,
            "answer": "Aspirin",
        },
        {"question": "Letter answer?", "options": opts, "answer": "D. Observation"},
        {"question": "Bare letter?", "options": ["Aspirin", "Heparin"], "answer": "B"},
        {"question": "Unknown answer?", "options": opts, "answer": "Insulin"},
        {"question": "Mislabelled?", "options": ["A. x", "C. y"], "answer": "x"},
    ]
    res = load("medqa", write_json(tmp_path / "medqa.json", items))
    assert [(e.id, e.gold) for e in res.examples] == [
        ("medqa/q1", "C"),
        ("medqa/medqa/1", "A"),
        ("medqa/medqa/2", "D"),
        ("medqa/medqa/3", "B"),
    ]
    q1, embedded = res.examples[:2]
    assert q1.meta["choices"] == ["Aspirin", "Heparin", "Warfarin", "Observation"]
    assert embedded.question.splitlines() == [
        "Which drug now?",
        "A) Aspirin",
        "B) Heparin",
        "C) Warfarin",
        "D) Observation",
    ]  # the options are not listed twice
    assert res.skipped_reasons == [
        "item 5: the answer matches no option",
        "item 6: option 2 is labelled 'C', expected 'B'",
    ]


def test_medqa_hub_and_local_only_dev(fake_hub):
    fake_hub["GBaker/MedQA-USMLE-4-options"] = [medqa_row("C")]
    assert get_task("medqa").load("test").examples[0].gold == "C"
    assert fake_hub.calls == [("GBaker/MedQA-USMLE-4-options", None, "test")]
    with pytest.raises(DataError, match="local only"):
        get_task("medqa").load("dev")


# ----------------------------------------------------------------------- CommonsenseQA
def csqa_row(key="B", qid="abc", labels="ABCDE"):
    choices = [{"label": lab, "text": f"thing {lab}"} for lab in labels]
    return {"answerKey": key, "id": qid, "question": {"question_concept": "c", "choices": choices, "stem": "Where?"}}


def test_commonsenseqa_local_jsonl_and_hub(tmp_path, monkeypatch, fake_hub):
    rows = [csqa_row("E", "q1"), csqa_row("", "q2"), csqa_row("B", "q3", "ABC")]
    res = load("commonsenseqa", write_jsonl(tmp_path / "commonsenseqa" / "dev300.jsonl", rows), "dev")
    assert [(e.id, e.gold) for e in res.examples] == [("commonsenseqa/q1", "E"), ("commonsenseqa/q3", "B")]
    assert res.examples[0].question.splitlines()[-1] == "E) thing E" and "answerKey ''" in res.skipped_reasons[0]
    monkeypatch.setenv("DIFFMAS_DATA_DIR", str(tmp_path))
    assert len(get_task("commonsenseqa").load("dev").examples) == 2
    monkeypatch.delenv("DIFFMAS_DATA_DIR")
    fake_hub["tau/commonsense_qa"] = [
        {
            "id": "h1",
            "question": "Why?",
            "question_concept": "c",
            "answerKey": "D",
            "choices": {"label": list("ABCDE"), "text": list("vwxyz")},
        }
    ]
    ex = get_task("commonsenseqa").load("dev").examples[0]
    assert (ex.id, ex.gold, ex.meta["choices"]) == ("commonsenseqa/h1", "D", list("vwxyz"))
    assert fake_hub.calls == [("tau/commonsense_qa", None, "validation[:300]")]


# ----------------------------------------------------------------------- StrategyQA
def bb_example(q="Could a llama birth twice during the War in Vietnam?", yes=False, target=None):
    scores = {"Yes": int(yes), "No": int(not yes)}
    return {"input": q, "target_scores": scores, "target": target or f"{'Yes' if yes else 'No'}. Because reasons."}


def test_strategyqa_bigbench_task_json(tmp_path):
    doc = {
        "name": "strategyqa",
        "description": "d",
        "keywords": [],
        "metrics": ["multiple_choice_grade"],
        "examples": [
            bb_example(yes=False),
            bb_example("Is water wet?", yes=True),
            bb_example("Tie?", target="x") | {"target_scores": {"Yes": 0, "No": 0}},
            bb_example("Maybe?") | {"target_scores": {"Maybe": 1, "No": 0}},
            bb_example("Disagree?", yes=True, target="No. It is not."),
            {"target_scores": {"Yes": 1, "No": 0}},
        ],
    }
    res = load("strategyqa", write_json(tmp_path / "task.json", doc))
    no, yes = res.examples
    assert (no.gold, yes.gold, no.id) == ("B", "A", "strategyqa/task/0")
    assert yes.question.splitlines() == ["Is water wet?", "A) Yes", "B) No"]
    assert yes.meta["solution"] == "Yes. Because reasons."
    assert res.skipped_reasons == [
        "item 3: Yes and No have the same target score",
        "item 4: target scores are for ['maybe', 'no'], expected Yes and No",
        "item 5: target text and target_scores disagree",
        "item 6: missing field 'input'",
    ]
    task = get_task("strategyqa")
    for reply, letter in [
        (r"\boxed{A}", "A"),
        (r"\boxed{Yes}", "A"),
        (r"\boxed{no}", "B"),
        ("The answer is no.", "B"),
        ("So the answer is: **Yes**", "A"),
        ("Yes.", "A"),
        ("(B)", "B"),
        ("I cannot tell", None),
    ]:
        assert task.score(reply, yes)[0] == letter, reply
    assert task.score("The answer is yes", yes)[1] and not task.score("The answer is yes", no)[1]


def test_strategyqa_hub_and_original_layouts(tmp_path, fake_hub):
    fake_hub["tasksource/bigbench"] = [
        {
            "idx": 0,
            "inputs": "Q: Is the sky blue?\nA:",
            "targets": ["Yes. Rayleigh."],
            "multiple_choice_targets": ["Yes", "No"],
            "multiple_choice_scores": [1, 0],
        }
    ]
    ex = get_task("strategyqa").load().examples[0]
    assert (ex.id, ex.gold, ex.question.splitlines()[0], ex.meta["solution"]) == (
        "strategyqa/0",
        "A",
        "Is the sky blue?",
        "Yes. Rayleigh.",
    )
    assert fake_hub.calls == [("tasksource/bigbench", "strategyqa", "train+validation")]
    rows = [
        {"qid": "s1", "question": "Did X happen?", "answer": False, "facts": ["f1.", "f2."]},
        {"qid": "s2", "question": "Did Y?", "answer": "maybe"},
    ]
    res = load("strategyqa", write_jsonl(tmp_path / "strategyqa.jsonl", rows))
    assert [(e.id, e.gold, e.meta.get("solution")) for e in res.examples] == [("strategyqa/s1", "B", "f1. f2.")]
    assert res.skipped_reasons == ["line 2: answer 'maybe' is not yes/no"]


# ----------------------------------------------------------------------- WinoGrande
def wino_row(answer="1", qid="w1"):
    return {
        "qID": qid,
        "sentence": "The trophy doesn't fit in the suitcase because the _ is too big.",
        "option1": "trophy",
        "option2": "suitcase",
        "answer": answer,
    }


def test_winogrande_two_options_as_letters(tmp_path, fake_hub):
    rows = [
        wino_row("1", "w1"),
        wino_row(2, "w2"),
        wino_row("", "w3"),
        wino_row("3", "w4"),
        wino_row("1", "w5") | {"sentence": "No blank here."},
    ]
    path = write_jsonl(tmp_path / "dev.jsonl.gz", [])
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    res = load("winogrande", path, "dev")
    a, b = res.examples
    assert [(a.id, a.gold), (b.id, b.gold)] == [("winogrande/w1", "A"), ("winogrande/w2", "B")]
    assert a.question.splitlines()[-2:] == ["A) trophy", "B) suitcase"] and "_" in a.question
    assert res.skipped_reasons == [
        "line 3: no answer (unlabelled row)",
        "line 4: answer '3' is not 1 or 2",
        "line 5: sentence has no blank '_'",
    ]
    task = get_task("winogrande")
    assert task.score(r"\boxed{trophy}", a) == ("A", True) and task.score(r"\boxed{B}", a) == ("B", False)
    assert task.score(r"\boxed{C}", a)[0] is None
    fake_hub["allenai/winogrande"] = [wino_row("2")]
    assert task.load("validation").examples[0].gold == "B"
    assert fake_hub.calls == [("allenai/winogrande", "winogrande_xl", "validation")]


# ----------------------------------------------------------------------- diffmas tasks
def test_tasks_cli_lists_sources_and_sizes(tmp_path, monkeypatch, capsys):
    write_jsonl(tmp_path / "math500" / "dev100.jsonl", [math_row("1"), math_row("2"), {"problem": "bad"}])
    write_gpqa_csv(tmp_path / "gpqa_diamond" / "gpqa_diamond.csv", [gpqa_record(i) for i in range(3)])
    monkeypatch.setenv("DIFFMAS_DATA_DIR", str(tmp_path))
    assert tasks_cli.main([]) == 0
    out = capsys.readouterr().out
    for name in NEW_TASKS:
        assert f"\n{name} (" in out, name
    assert "HuggingFaceH4/MATH-500 (dev: hub split 'test[:100]')" in out
    assert f"dev: 2 in {tmp_path / 'math500' / 'dev100.jsonl'}, 1 malformed rows skipped" in out
    assert "test: 500 (published size; not local)" in out and "test: 3 in" in out
    assert "$DIFFMAS_DATA_DIR/medqa/ (test: medqa.json" in out and "train: 1000 generated" in out
    assert "Made-up question" not in out  # no question text is ever printed


# ----------------------------------------------------------------------- shared dev files
SHARED_FILES = {
    "math500": ("dev", "math500/dev100.jsonl", 100),
    "medqa": ("dev", "medqa/us_test_minus_heldout.jsonl", 974),
    "commonsenseqa": ("dev", "commonsenseqa/dev300.jsonl", 300),
}


@pytest.mark.parametrize("name", sorted(SHARED_FILES))
def test_shared_dev_files_parse_completely(name, monkeypatch):
    split, rel, count = SHARED_FILES[name]
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"shared benchmark file {path} absent")
    task = get_task(name)
    res = task.load(split, data_path=str(path))
    assert (len(res.examples), res.skipped) == (count, 0), res.skipped_reasons
    monkeypatch.setenv("DIFFMAS_DATA_DIR", str(SHARED))
    assert task.load(split).examples == res.examples
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row, ex in zip(raw, res.examples):
        if name == "math500":
            assert ex.gold == row["answer"] and task.score(row["solution"], ex)[1], ex.id  # reference solutions pass
        elif name == "medqa":
            assert ex.gold == row["answer_idx"] and ex.meta["choices"]["ABCD".index(ex.gold)] == row["answer"].strip()
        else:
            assert ex.gold == row["answerKey"] and ex.id == f"commonsenseqa/{row['id']}"
        assert task.score(rf"\boxed{{{ex.gold}}}", ex)[1], ex.id


def test_math_equal_keeps_matrix_row_breaks():
    assert math_equal(r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}")
    assert not math_equal(r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}")
    assert math_equal(r"1\,000", "1000") and math_equal(r"\frac{1}{2}", "0.5")
