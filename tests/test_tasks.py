"""Tests for diffmas.tasks: loading (files, data dir, hub), skipping bad rows, and answer scoring."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

# Never touch the network, even if a test forgets to monkeypatch the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from diffmas.errors import DataError, UnknownNameError  # noqa: E402
from diffmas.tasks import Example, get_task, list_tasks  # noqa: E402
from diffmas.tasks.answers import extract_choice, extract_math_answer, math_equal  # noqa: E402
from diffmas.tasks.synthetic_arith import apply_op  # noqa: E402

# ../shared/data beside the checkout, as on the development machines and in CI.
SHARED = Path(os.environ.get("DIFFMAS_TEST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
GSM8K_TRAIN = SHARED / "gsm8k" / "train.jsonl"
needs_shared = pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason="shared benchmark data absent")


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch):
    monkeypatch.delenv("DIFFMAS_DATA_DIR", raising=False)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def gsm_row(q: str, a: str) -> dict:
    return {"question": q, "answer": f"Work it out.\n#### {a}"}


# ----------------------------------------------------------------------- math answers
@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so it is \boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\boxed{5}}", "5"),
        (r"first \boxed{3}, corrected: \boxed{\text{4}}", "4"),
        (r"\boxed{\left(\frac{1}{2}\right)}", "0.5"),
        (r"\boxed 5 is it", "5"),
        (r"\fbox{7}", "7"),
        (r"\boxed{\$1,000}", "1000"),
        (r"\boxed{1{,}000}", "1000"),
        (r"\boxed{18.0}", "18"),
        (r"\boxed{18 \text{ apples}}", "18"),
        (r"\boxed{x = -\dfrac{3}{4}}", "-0.75"),
        (r"\boxed{50\%}", "50"),
        (r"\boxed{\sqrt{2}}", r"\sqrt{2}"),
        ("The answer is $1,234.50.", "1234.5"),
        ("Total so far 3, then 4. The answer is: 12 cookies", "12"),
        ("She has 48/2 = <<48/2=24>>24 left.\n#### 1,000", "1000"),
        ("It drops 5-3=2 degrees", "2"),
        ("the balance is -5.", "-5"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_math_answer(text, expected):
    assert extract_math_answer(text) == expected


@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("18.0", "18", True),
        ("1,000", "1000", True),
        ("$1,000", "1000", True),
        (r"\frac{1}{2}", "0.5", True),
        (r"\dfrac{14}{3}", r"\frac{14}{3}", True),
        ("-3", "-3", True),
        ("-3", "3", False),
        ("17", "18", False),
        ("0.3333333", "1/3", True),
        ("0.333", "1/3", False),
        (r"\sqrt{4}", "2", True),
        (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
        (r"(3, \frac{\pi}{2})", r"\left(3, \frac{\pi}{2}\right)", True),
        (None, "1", False),
        ("", "0", False),
    ],
)
def test_math_equal(pred, gold, same):
    assert math_equal(pred, gold) is same


# ----------------------------------------------------------------------- multiple choice
OPTS = ["fog", "rain", "drought", "a magnet"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{B}", "B"),
        (r"\boxed{(C)}", "C"),
        (r"\boxed{D) a magnet}", "D"),
        (r"\boxed{\text{B}}", "B"),
        (r"\boxed{Drought}", "C"),
        (r"\boxed{A magnet}", "D"),
        ("The answer is B.", "B"),
        ("Answer: (C) drought", "C"),
        ("The answer is **D**", "D"),
        ("b", "B"),
        ("(A) fog or (B) rain... I pick (C)", "C"),
        (r"\boxed{E}", None),
        ("The answer is E.", None),
        ("I am not sure", None),
        ("Therefore, the correct option is C.", "C"),
        ("The correct option is D) drought", "D"),
        ("Option A is wrong. Option B is wrong.", None),
        ("The letter of the correct option is COPERNicus.", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, "ABCD", OPTS) == expected


# Outputs of Qwen2.5-Coder-0.5B on ARC-Challenge that stated the option without its letter.
@pytest.mark.parametrize(
    "text, options, expected",
    [
        (r"so the object is \boxed{25} cm.", ["5 cm", "25 cm", "50 cm", "100 cm"], "B"),
        (r"\boxed{0.5}", ["1/2", "0.25", "2", "4"], "A"),  # numbers compare as numbers
        (r"\boxed{7}", ["7 m", "7 km", "14 m", "1 m"], None),  # two options say 7: no guess
        (
            "Thinking...\nThe best way is to use paper towels to clean up spills.",
            ["turn off lights", "use paper towels to clean up spills", "recycle cans", "take showers"],
            "B",
        ),
        (
            "The correct OPTION is: Theamount of larger sediment particles being carriedby the water will increase.",
            [
                "The amount of larger sediment particles being carried by the water will increase.",
                "It will stop",
                "It freezes",
                "Nothing changes",
            ],
            "A",
        ),
        # An echo of the question's option list is not a choice.
        (
            "Which one?\nA) lipids bonding\nB) monomers bonding\nD) saccharides bonding",
            ["lipids bonding", "monomers bonding", "amino acids bonding", "saccharides bonding"],
            None,
        ),
        ("D) saccharides bonding", ["lipids bonding", "monomers bonding", "amino acids", "saccharides bonding"], "D"),
        ("D) lipids bonding", ["lipids bonding", "monomers bonding", "amino acids", "saccharides bonding"], None),
        ("Both lipids bonding and monomers bonding occur.", ["lipids bonding", "monomers bonding", "x y z", "w"], None),
        ("The answer is yes.", ["yes", "no"], None),  # options shorter than 4 characters are not searched for
    ],
)
def test_extract_choice_by_option_text(text, options, expected):
    assert extract_choice(text, "ABCD"[: len(options)], options) == expected


def ai2_row(labels, key, qid="Q1"):
    choices = [{"text": f"option {i}", "label": lab} for i, lab in enumerate(labels)]
    return {"id": qid, "question": {"stem": "Which one?", "choices": choices}, "answerKey": key}


def test_arc_numeric_labels_and_five_choices(tmp_path):
    path = write_jsonl(
        tmp_path / "arc.jsonl",
        [
            ai2_row(["1", "2", "3", "4"], "3", "num"),
            ai2_row(list("ABCDE"), "E", "five"),
            ai2_row(list("ABC"), "A", "three"),
        ],
    )
    task = get_task("arc_challenge")
    res = task.load(data_path=str(path))
    num, five, three = res.examples
    assert (num.gold, num.meta["original_labels"], num.meta["labels"]) == ("C", ["1", "2", "3", "4"], list("ABCD"))
    assert num.question.splitlines() == ["Which one?", "A) option 0", "B) option 1", "C) option 2", "D) option 3"]
    assert num.id == "arc_challenge/num"
    assert task.score(r"\boxed{C}", num) == ("C", True)
    assert task.score(r"\boxed{option 2}", num) == ("C", True)
    assert task.score(r"\boxed{E}", five) == ("E", True)
    assert task.score(r"\boxed{E}", three)[0] is None  # E is not an option of a 3-choice question
    assert task.score("The answer is (B)", three) == ("B", False)


# ----------------------------------------------------------------------- gsm8k
def test_gsm8k_row_parsing(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [gsm_row("How many?", "1,000"), gsm_row("Owed?", "-7")])
    res = get_task("gsm8k").load(data_path=str(path))
    assert [e.gold for e in res.examples] == ["1000", "-7"]
    assert res.examples[0].meta["solution"] == "Work it out."
    assert res.examples[1].id == "gsm8k/g/1"  # no split given: labelled by the file name
    assert res.skipped == 0 and res.source == str(path)


@needs_shared
def test_gsm8k_shared_file_and_data_dir(monkeypatch):
    task = get_task("gsm8k")
    direct = task.load("train", data_path=str(GSM8K_TRAIN))
    assert len(direct.examples) == 7473 and direct.skipped == 0
    assert direct.examples[-1].id == "gsm8k/train/7472"
    monkeypatch.setenv("DIFFMAS_DATA_DIR", str(SHARED))
    last = task.load("train", offset=-100)
    assert last.examples == direct.examples[-100:] and last.source == str(GSM8K_TRAIN)
    assert task.load("train", offset=-100, limit=10).examples == direct.examples[-100:-90]
    assert task.load("train", offset=5, limit=2).examples == direct.examples[5:7]
    with pytest.raises(DataError, match=r"gsm8k[/\\]test\.jsonl.*train\.jsonl"):
        task.load("test")  # only train is shared: the error names the path and lists what is there


@needs_shared
def test_gsm8k_reference_answers_score_correct():
    task = get_task("gsm8k")
    rows = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()[:300]]
    examples = task.load("train", data_path=str(GSM8K_TRAIN), limit=300).examples
    for row, ex in zip(rows, examples):
        assert task.score(row["answer"].splitlines()[-1], ex)[1], ex.id
        assert task.score(f"{ex.meta['solution']}\nSo the answer is $\\boxed{{{ex.gold}}}$.", ex)[1]


def test_negative_offset_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [gsm_row(f"Q{i}?", str(i)) for i in range(10)])
    task = get_task("gsm8k")
    assert [e.gold for e in task.load("train", str(path), offset=-3).examples] == ["7", "8", "9"]
    assert [e.gold for e in task.load("train", str(path), limit=2).examples] == ["0", "1"]
    assert [e.gold for e in task.load("train", str(path), offset=-3, limit=1).examples] == ["7"]


# ----------------------------------------------------------------------- malformed files
def test_malformed_rows_are_skipped_and_counted(tmp_path):
    rows = [
        gsm_row("Good one?", "3"),
        "{not json",
        {"question": "No answer?"},
        {"question": "Bad gold?", "answer": "text\n#### seven"},
        {"question": "   ", "answer": "#### 2"},
        [1, 2],
        {"question": "No marker?", "answer": "42"},
        gsm_row("Also good?", "4"),
    ]
    res = get_task("gsm8k").load("train", data_path=str(write_jsonl(tmp_path / "bad.jsonl", rows)))
    assert [e.gold for e in res.examples] == ["3", "4"]
    assert [e.id for e in res.examples] == ["gsm8k/train/0", "gsm8k/train/7"]  # ids keep line positions
    assert res.skipped == 6
    assert res.skipped_reasons[0].startswith("line 2: invalid JSON")
    assert res.skipped_reasons[1] == "line 3: missing field 'answer'"
    assert "not a number" in res.skipped_reasons[2] and "empty" in res.skipped_reasons[3]


def test_malformed_arc_rows_skipped(tmp_path):
    rows = [ai2_row(list("ABCD"), "Z"), {"question": {"stem": "x"}, "answerKey": "A"}, ai2_row(list("ABCD"), "B", "ok")]
    res = get_task("arc_easy").load(data_path=str(write_jsonl(tmp_path / "a.jsonl", rows)))
    assert [e.id for e in res.examples] == ["arc_easy/ok"] and res.skipped == 2
    assert "answerKey 'Z'" in res.skipped_reasons[0] and "missing field 'choices'" in res.skipped_reasons[1]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"  \n\n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR", "binary"),
        (b"\xff\xfe\xfa bad bytes", "UTF-8"),
        (b'{"question": "x"}\n{oops\n', "no valid examples"),
    ],
)
def test_unusable_files_raise_data_error(tmp_path, content, message):
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        get_task("gsm8k").load(data_path=str(path))


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        get_task("gsm8k").load(data_path=str(tmp_path / "nope.jsonl"))


def test_other_file_formats(tmp_path):
    rows = [gsm_row("A?", "1"), gsm_row("B?", "2")]
    gz = tmp_path / "g.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    as_list = tmp_path / "g.json"
    as_list.write_text(json.dumps(rows))
    misnamed = write_jsonl(tmp_path / "h.json", rows)  # jsonl saved with a .json name
    csv_file = tmp_path / "g.csv"
    csv_file.write_text('question,answer\nA?,"x\n#### 1"\nB?,"#### 2"\n')
    task = get_task("gsm8k")
    for path in (gz, as_list, misnamed, csv_file):
        assert [e.gold for e in task.load(data_path=str(path)).examples] == ["1", "2"], path


# ----------------------------------------------------------------------- data dir and hub
def test_data_dir_missing_file_lists_contents(tmp_path, monkeypatch):
    (tmp_path / "arc_easy").mkdir()
    (tmp_path / "arc_easy" / "ARC-Easy-Train.jsonl").write_text(json.dumps(ai2_row(list("ABCD"), "A")) + "\n")
    monkeypatch.setenv("DIFFMAS_DATA_DIR", str(tmp_path))
    task = get_task("arc_easy")
    assert len(task.load("train").examples) == 1
    with pytest.raises(DataError, match=r"ARC-Easy-Dev\.jsonl.*contains: ARC-Easy-Train\.jsonl"):
        task.load("dev")


def test_hub_rows_parse(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []
    hub_arc = [
        {
            "id": "Mercury_1",
            "question": "What falls?",
            "answerKey": "2",
            "choices": {"text": ["rain", "fog", "dew"], "label": ["1", "2", "3"]},
        }
    ]
    hub_gsm = [{"question": "How many?", "answer": "2 + 2 = 4\n#### 4"}]

    def fake_load_dataset(*args, split=None, **kwargs):
        calls.append((args, split))
        return hub_arc if args[0] == "allenai/ai2_arc" else hub_gsm

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    res = get_task("arc_challenge").load("dev")
    ex = res.examples[0]
    assert (ex.gold, ex.meta["choices"], ex.question.splitlines()[-1]) == ("B", ["rain", "fog", "dew"], "C) dew")
    assert calls[-1] == (("allenai/ai2_arc", "ARC-Challenge"), "validation")
    assert "allenai/ai2_arc" in res.source
    gsm = get_task("gsm8k").load("test")
    assert gsm.examples[0].gold == "4" and calls[-1] == (("openai/gsm8k", "main"), "test")


def test_offline_hub_failure_explains_fix(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode is enabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        get_task("gsm8k").load("train")
    assert "--data-path" in str(err.value) and "DIFFMAS_DATA_DIR" in str(err.value)


# ----------------------------------------------------------------------- registry
def test_registry_and_unknown_names():
    names = [t.name for t in list_tasks()]
    assert {"gsm8k", "arc_easy", "arc_challenge", "synthetic-arith"} <= set(names)
    assert get_task("synthetic_arith").name == "synthetic-arith"  # separators are interchangeable
    with pytest.raises(UnknownNameError) as err:
        get_task("gsm9k")
    assert all(n in str(err.value) for n in names) and "gsm8k" in str(err.value)
    with pytest.raises(UnknownNameError, match="validation"):
        get_task("arc_easy").load("holdout")
    expected = {
        "gsm8k",
        "math500",
        "aime2024",
        "aime2025",
        "gpqa_diamond",
        "arc_easy",
        "arc_challenge",
        "medqa",
        "commonsenseqa",
        "strategyqa",
        "winogrande",
        "humaneval",
        "humanevalplus",
        "mbpp",
        "mbppplus",
        "synthetic-arith",
    }
    assert expected <= set(names)
    for task in list_tasks():
        assert task.family in ("math", "multiple_choice", "code")
        # Where the answer goes: \boxed{} for math and letters, a fenced block for code.
        assert ("```python" if task.family == "code" else "boxed") in task.answer_format, task.name


# ----------------------------------------------------------------------- synthetic-arith
def recompute(example: Example) -> int:
    """Independent re-evaluation of the recorded operations (plain arithmetic, no generator code)."""
    value = example.meta["start"]
    for op, *args in example.meta["ops"]:
        before = value
        value = {
            "add": lambda: value + args[0],
            "sub": lambda: value - args[0],
            "packs": lambda: value + args[0] * args[1],
            "mul": lambda: value * args[0],
            "div": lambda: value / args[0],
            "half": lambda: value / 2,
        }[op]()
        assert value == int(value) and value >= 0, (example.id, before, op, args)
        assert value == apply_op(before, op, args)
    return int(value)


def test_synthetic_arith_is_deterministic_and_correct():
    task = get_task("synthetic-arith")
    a = task.load("train", seed=3, limit=300).examples
    assert a == task.load("train", seed=3, limit=300).examples
    assert a != task.load("train", seed=4, limit=300).examples
    assert len(task.load("train").examples) == 1000 and len(task.load("test").examples) == 200
    assert task.load("train", seed=3, offset=-2).examples == task.load("train", seed=3).examples[-2:]
    for ex in a:
        assert ex.gold == str(recompute(ex))
        assert 2 <= len(ex.meta["ops"]) <= 4 and ex.question.endswith("?")
        assert task.score(ex.meta["solution"], ex) == (ex.gold, True)
    assert len({ex.question.split(".")[1] for ex in a}) > 20  # wording varies


def test_synthetic_arith_splits_are_disjoint():
    task = get_task("synthetic-arith")
    train = {e.question for e in task.load("train").examples}
    for seed in (0, 1):
        assert not train & {e.question for e in task.load("test", seed=seed).examples}
