"""Tests for the code tasks (humaneval, humanevalplus, mbpp, mbppplus): every local format, answer
extraction, sandboxed scoring, training targets, and the real MBPP file when it is present."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import diffmas.tasks.code  # noqa: E402,F401  (registers the code tasks)
from diffmas.sandbox import run_programs  # noqa: E402
from diffmas.tasks import get_task  # noqa: E402
from diffmas.tasks.code import RUN_NAME, code_blocks, select_solution  # noqa: E402

SHARED = Path(os.environ.get("DIFFMAS_TEST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MBPP_FILE = SHARED / "mbpp" / "sanitized-mbpp.json"

HE_ROWS = [
    {
        "task_id": "HumanEval/0",
        "entry_point": "add",
        "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    },
    {
        "task_id": "HumanEval/1",
        "entry_point": "decode",
        "prompt": "from typing import List\n\n\ndef encode(s: str) -> str:\n    return s[::-1]\n\n\n"
        'def decode(s: str) -> str:\n    """Undo encode."""\n',
        "canonical_solution": "    return encode(s)\n",
        "test": "def check(candidate):\n    assert candidate(encode('abc')) == 'abc'\n",
    },
    {"task_id": "HumanEval/2", "entry_point": "broken", "prompt": "def broken():\n", "test": "no check"},
]
MBPP_ROWS = [
    {
        "task_id": 11,
        "prompt": "Write a function to add two numbers.",
        "code": "def add_nums(a, b):\n    return a + b",
        "test_imports": [],
        "test_list": ["assert add_nums(1, 2) == 3", "assert add_nums(0, 0) == 0"],
    },
    {
        "task_id": 12,
        "prompt": "Write a function for the square root.",
        "code": "import math\ndef root(x):\n    return math.sqrt(x)",
        "test_imports": ["import math"],
        "test_list": ["assert math.isclose(root(4), 2.0)"],
    },
    {
        "task_id": 601,
        "prompt": "Write a function to double.",
        "code": "def double(x):\n    return 2 * x",
        "test_imports": [],
        "test_list": ["assert double(2) == 4"],
    },
    {"task_id": 13, "prompt": "No code here.", "test_list": ["assert f() == 1"]},
]
MBPP_PLUS_ROWS = [
    {
        "task_id": "Mbpp/11",
        "prompt": '"""\nWrite a function to add two numbers.\nassert add_nums(1, 2) == 3\n"""\n',
        "code": "def add_nums(a, b):\n    return a + b",
        "test_imports": [],
        "test_list": ["assert add_nums(1, 2) == 3"],
        "test": "inputs = [[1, 2], [5, 7], [-3, 3]]\nresults = [3, 12, 0]\n"
        "for inp, exp in zip(inputs, results):\n    assert add_nums(*inp) == exp\n",
    },
]


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch):
    monkeypatch.delenv("DIFFMAS_DATA_DIR", raising=False)


@pytest.fixture
def files(tmp_path):
    return {
        "humaneval": write_jsonl_gz(tmp_path / "HumanEval.jsonl.gz", HE_ROWS),
        "humanevalplus": write_jsonl_gz(tmp_path / "HumanEvalPlus-OriginFmt.jsonl.gz", HE_ROWS),
        "mbpp": Path(tmp_path / "sanitized-mbpp.json"),
        "mbppplus": write_jsonl_gz(tmp_path / "MbppPlus-OriginFmt.jsonl.gz", MBPP_PLUS_ROWS),
    }


@pytest.fixture
def mbpp_file(files):
    files["mbpp"].write_text(json.dumps(MBPP_ROWS, indent=1))
    return files["mbpp"]


# ----------------------------------------------------------------------- registry and loading
def test_registered_with_hub_ids():
    hub = {
        "humaneval": "openai/openai_humaneval",
        "humanevalplus": "evalplus/humanevalplus",
        "mbpp": "google-research-datasets/mbpp",
        "mbppplus": "evalplus/mbppplus",
    }
    for name, hub_id in hub.items():
        task = get_task(name)
        assert task.family == "code" and task.hub_id == hub_id and "```python" in task.answer_format
    assert get_task("mbpp").hub_config == "sanitized"
    assert get_task("mbpp").resolve_split("dev") == "validation"


@pytest.mark.parametrize("name", ["humaneval", "humanevalplus"])
def test_humaneval_formats(name, files):
    task = get_task(name)
    loaded = task.load(data_path=str(files[name]))
    assert [e.id for e in loaded.examples] == [f"{name}/0", f"{name}/1"]
    assert loaded.skipped == 1 and "check" in loaded.skipped_reasons[0]
    first = loaded.examples[0]
    assert "def add(a: int, b: int)" in first.question and first.meta["entry_point"] == "add"
    assert first.gold == HE_ROWS[0]["prompt"] + HE_ROWS[0]["canonical_solution"]


def test_humaneval_from_data_dir(tmp_path, monkeypatch):
    (tmp_path / "humaneval").mkdir()
    write_jsonl_gz(tmp_path / "humaneval" / "HumanEval.jsonl.gz", HE_ROWS[:2])
    monkeypatch.setenv("DIFFMAS_DATA_DIR", str(tmp_path))
    assert len(get_task("humaneval").load().examples) == 2


def test_mbpp_sanitized_json_list_selects_split_by_task_id(mbpp_file):
    task = get_task("mbpp")
    test = task.load("test", data_path=str(mbpp_file))
    assert [e.id for e in test.examples] == ["mbpp/11", "mbpp/12"]
    assert test.skipped == 1 and "code" in test.skipped_reasons[0]
    assert test.examples[0].meta["entry_point"] == "add_nums"
    assert "assert add_nums(1, 2) == 3" in test.examples[0].question
    train = task.load("train", data_path=str(mbpp_file))
    assert [e.id for e in train.examples] == ["mbpp/601"] and train.skipped == 0


def test_mbpp_plus_format(files):
    task = get_task("mbppplus")
    loaded = task.load(data_path=str(files["mbppplus"]))
    example = loaded.examples[0]
    assert example.id == "mbppplus/11" and loaded.skipped == 0
    assert example.question.startswith("Write a function to add two numbers.") and '"""' not in example.question
    assert "inputs = " in example.meta["test"]


# ----------------------------------------------------------------------- extraction
def test_code_blocks_and_selection():
    text = (
        "Plan first.\n```python\ndef helper():\n    return 1\n```\nThen:\n```bash\nls\n```\n"
        "```py\ndef add(a, b):\n    return a - b\n```\nFixed:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    )
    assert len(code_blocks(text)) == 3  # the bash block is not Python
    assert select_solution(text, "add") == "def add(a, b):\n    return a + b"
    assert select_solution(text, "missing") == "def add(a, b):\n    return a + b"  # the last block
    assert select_solution("```python\ndef add(a, b):\n    return a + b", "add").endswith("a + b")  # unclosed
    assert select_solution("def add(a, b):\n    return a + b\n", "add").startswith("def add")  # bare code
    assert select_solution("The answer is 42.", "add") is None
    assert select_solution("```text\nnot code\n```", "add") is None


# ----------------------------------------------------------------------- scoring
def test_humaneval_scoring_statuses(files):
    task = get_task("humaneval")
    add, decode = task.load(data_path=str(files["humaneval"])).examples
    right = "def add(a, b):\n    return a + b"
    assert task.score(f"```python\n{right}\n```", add) == (right, True)
    assert task.score("```python\n    return a + b\n```", add)[1]  # a body completing the prompt
    assert task.score("```python\ndef decode(s):\n    return encode(s)\n```", decode)[1]  # uses the prompt's helper
    wrong = task.execute("```python\ndef add(a, b):\n    return a * b\n```", add)
    assert wrong.status == "fail" and "candidate(2, 3) == 5" in wrong.reason
    assert task.score("```python\ndef add(a, b):\n    return a * b\n```", add)[1] is False
    assert task.execute("```python\ndef add(a, b):\n    return undefined\n```", add).status == "error"
    assert task.execute("```python\ndef add(a, b):\n    while True:\n        pass\n```", add).status == "timeout"
    assert task.execute("no code at all", add).status == "error"
    assert task.score("no code at all", add) == (None, False)
    demo = (
        "```python\ndef add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n"
        "    print(add(int(input()), 1))\n```"
    )
    assert task.score(demo, add)[1]  # the demo block does not run


@pytest.mark.parametrize("name", ["humaneval", "humanevalplus", "mbpp", "mbppplus"])
def test_training_target_is_a_passing_fenced_block(name, files, mbpp_file):
    task = get_task(name)
    for example in task.load(data_path=str(files[name])).examples:
        target = task.training_target(example)
        assert target.startswith("```python\n") and target.endswith("\n```")
        assert task.execute(target, example).status == "pass", example.id


def test_mbpp_scoring(mbpp_file, files):
    task = get_task("mbpp")
    example = task.load("test", data_path=str(mbpp_file)).examples[0]
    assert task.score("```python\ndef add_nums(a, b):\n    return a + b\n```", example)[1]
    assert task.execute("```python\ndef add_nums(a, b):\n    return 3\n```", example).status == "fail"
    plus = get_task("mbppplus")
    plus_example = plus.load(data_path=str(files["mbppplus"])).examples[0]
    # Passes the base test shown in the question but not the extra MBPP+ inputs.
    result = plus.execute("```python\ndef add_nums(a, b):\n    return 3\n```", plus_example)
    assert result.status == "fail"


# ----------------------------------------------------------------------- the real MBPP file
@pytest.mark.skipif(not MBPP_FILE.is_file(), reason="shared benchmark data absent")
def test_real_mbpp_file_loads_and_canonical_solutions_pass():
    task = get_task("mbpp")
    sizes = {}
    for split in task.splits:
        loaded = task.load(split, data_path=str(MBPP_FILE))
        assert loaded.skipped == 0, loaded.skipped_reasons
        sizes[split] = len(loaded.examples)
    assert sizes == {"train": 120, "validation": 43, "test": 257, "prompt": 7}
    examples = task.load("test", data_path=str(MBPP_FILE), limit=30).examples
    programs = [task.build_program(task.extract_answer(task.training_target(e), e), e) for e in examples]
    results = run_programs(programs, task.limits, workers=2, run_name=RUN_NAME)
    failed = [(e.id, r.status, r.reason) for e, r in zip(examples, results) if not r.passed]
    assert not failed
