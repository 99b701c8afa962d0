"""Code answers cannot judge themselves: plus-format problems (numpy float checks, as evalplus
writes them) score right and wrong solutions correctly, and programs that cheat score as wrong."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

import diffmas.tasks.code  # noqa: F401  (registers the code tasks)
from diffmas.sandbox import isolation_mode
from diffmas.tasks import get_task
from diffmas.tasks.code_calls import CODEC

# The shape of HumanEval+'s and MBPP+'s OriginFmt tests: inputs and results in the test program,
# compared by an assertion helper that uses numpy for floats.
PLUS_TEST = """import numpy as np

def is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    return False

def assertion(out, exp, atol):
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if out != exp and atol != 0:
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert out == exp, f"out: {out}, exp: {exp}"

"""
HE_PLUS = {
    "task_id": "HumanEval/2",
    "entry_point": "truncate_number",
    "prompt": 'def truncate_number(number: float) -> float:\n    """The decimal part of number."""\n',
    "canonical_solution": "    return number % 1.0\n",
    "test": PLUS_TEST
    + "def check(candidate):\n    inputs = [[3.5], [1.25], [123.456]]\n    results = [0.5, 0.25, 0.456]\n"
    "    for inp, exp in zip(inputs, results):\n        assertion(candidate(*inp), exp, 0)\n",
}
MBPP_PLUS = {
    "task_id": "Mbpp/3",
    "prompt": '"""\nWrite a python function to identify non-prime numbers.\nassert is_not_prime(2) == False\n"""\n',
    "code": "import math\ndef is_not_prime(n):\n    if n == 1:\n        return True\n"
    "    for i in range(2, int(math.sqrt(n)) + 1):\n        if n % i == 0:\n            return True\n    return False",
    "test_imports": [],
    "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True"],
    "test": PLUS_TEST + "inputs = [[2], [10], [35], [37], [1]]\nresults = [False, True, True, False, True]\n"
    "for i, (inp, exp) in enumerate(zip(inputs, results)):\n    assertion(is_not_prime(*inp), exp, 0)\n",
}
HE_BASE = {
    "task_id": "HumanEval/9",
    "entry_point": "mean_abs",
    "prompt": 'def mean_abs(xs: list) -> float:\n    """Mean absolute value."""\n',
    "canonical_solution": "    return sum(abs(x) for x in xs) / len(xs)\n",
    "test": "def check(candidate):\n    assert abs(candidate([1.0, -3.0]) - 2.0) < 1e-6\n"
    "    assert abs(candidate([-2.0]) - 2.0) < 1e-6\n",
}


def _gz(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


@pytest.fixture
def problems(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFMAS_DATA_DIR", raising=False)
    he_plus = get_task("humanevalplus").load(
        data_path=str(_gz(tmp_path / "HumanEvalPlus-OriginFmt.jsonl.gz", [HE_PLUS]))
    )
    mbpp_plus = get_task("mbppplus").load(data_path=str(_gz(tmp_path / "MbppPlus-OriginFmt.jsonl.gz", [MBPP_PLUS])))
    he = get_task("humaneval").load(data_path=str(_gz(tmp_path / "HumanEval.jsonl.gz", [HE_BASE])))
    return {
        "humanevalplus": he_plus.examples[0],
        "mbppplus": mbpp_plus.examples[0],
        "humaneval": he.examples[0],
        "data": tmp_path,
    }


def fence(code: str) -> str:
    return f"```python\n{code}\n```"


def test_plus_format_scores_right_and_wrong_solutions(problems):
    he, mbpp = get_task("humanevalplus"), get_task("mbppplus")
    ok = he.execute(fence("def truncate_number(number):\n    return number - int(number)"), problems["humanevalplus"])
    assert ok.status == "pass", ok  # 123.456 - 123 is not 0.456 exactly: numpy's tolerance decides
    wrong = he.execute(
        fence("def truncate_number(number):\n    return round(number % 1.0, 1)"), problems["humanevalplus"]
    )
    assert wrong.status == "fail", wrong
    assert mbpp.execute(fence(MBPP_PLUS["code"]), problems["mbppplus"]).status == "pass"
    lazy = mbpp.execute(fence("def is_not_prime(n):\n    return n % 2 == 0"), problems["mbppplus"])
    assert lazy.status == "fail" and "out: True, exp: False" in lazy.reason, lazy
    raises = mbpp.execute(fence("def is_not_prime(n):\n    return 1 / 0"), problems["mbppplus"])
    assert raises.status == "error" and "ZeroDivisionError" in raises.reason, raises


def test_output_and_statuses_survive_the_split(problems):
    he = get_task("humaneval")
    printed = he.execute(fence("print('hello')\ndef mean_abs(xs):\n    return 0.0"), problems["humaneval"])
    assert printed.status == "fail" and printed.stdout == "hello\n"
    assert "candidate([1.0, -3.0])" in printed.reason
    assert (
        he.execute(fence("def mean_abs(xs):\n    while True:\n        pass"), problems["humaneval"]).status == "timeout"
    )
    assert he.execute(fence("def other(xs):\n    return 1"), problems["humaneval"]).status == "error"


CHEATS = {
    # the harness's nonce, stolen from its frame, reported as a pass
    "nonce": "import os, sys\n"
    "def mean_abs(xs):\n    return 0.0\n"
    "f = sys._getframe(0)\n"
    "while f is not None and 'nonce' not in f.f_locals:\n    f = f.f_back\n"
    "if f is not None:\n"
    "    os.write(f.f_locals['result_fd'], ('pass ' + f.f_locals['nonce'] + '\\n').encode())\n"
    "    os._exit(0)\n",
    # an answer equal to everything
    "eq": "class Anything(float):\n    def __eq__(self, other):\n        return True\n    __hash__ = float.__hash__\n"
    "    def __lt__(self, other):\n        return True\n    def __sub__(self, other):\n        return self\n"
    "    def __abs__(self):\n        return self\n"
    "def mean_abs(xs):\n    return Anything(99.0)\n",
    "object": "class Anything:\n    def __eq__(self, other):\n        return True\n    def __lt__(self, other):\n"
    "        return True\n    def __sub__(self, other):\n        return self\n    def __abs__(self):\n        return self\n"
    "def mean_abs(xs):\n    return Anything()\n",
    # the comparison's own tools patched
    "abs": "import builtins\nbuiltins.abs = lambda value: 0.0\ndef mean_abs(xs):\n    return 123.0\n",
    # the expected values read out of the program's own file
    "own-file": "import re\nsource = open(__file__).read()\n"
    "expected = {m.group(1): float(m.group(2)) for m in re.finditer(r'candidate\\((\\[.*?\\])\\) - ([\\d.]+)', source)}\n"
    "def mean_abs(xs):\n    return expected.get(repr(xs), 0.0)\n",
}


@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_cheating_programs_score_as_wrong(cheat, problems):
    result = get_task("humaneval").execute(fence(CHEATS[cheat]), problems["humaneval"])
    assert result.status != "pass", (cheat, result)
    assert get_task("humaneval").score(fence(CHEATS[cheat]), problems["humaneval"])[1] is False


@pytest.mark.skipif(isolation_mode() != "namespaces", reason="only a private filesystem hides the data files")
def test_the_data_files_are_out_of_reach(problems):
    data = problems["data"] / "HumanEval.jsonl.gz"
    program = (
        "import gzip, json\n"
        f"rows = [json.loads(line) for line in gzip.open({str(data)!r})]\n"
        "def mean_abs(xs):\n    return 2.0\n"
    )
    result = get_task("humaneval").execute(fence(program), problems["humaneval"])
    assert result.status == "error" and "FileNotFoundError" in result.reason, result


def test_codec_round_trips_plain_values_and_refuses_the_rest():
    space: dict = {"__data_fd__": None}
    exec(CODEC, space)
    enc, dec = space["__dm_enc"], space["__dm_dec"]
    values = [None, True, 0, -(2**70), 1.5, float("inf"), 1e-320, 2 + 3j, "x", b"\x00", [1, (2, 3)], {"a": {1, 2}}]
    values.append(frozenset({1}))
    for value in values:
        assert dec(json.loads(json.dumps(enc(value)))) == value
    assert type(dec(enc((1,)))) is tuple and type(dec(enc([1]))) is list
    nan = dec(json.loads(json.dumps(enc(float("nan")))))
    assert nan != nan

    class Sneaky(int):
        def __eq__(self, other):
            return True

    assert enc(Sneaky(3)) == 3 and type(dec(enc(Sneaky(3)))) is int
    opaque = dec(enc(object()))
    assert opaque != opaque and not (opaque == 1)


def test_a_reference_that_fails_its_tests_is_scored_in_one_process(problems, recwarn):
    task = get_task("humaneval")
    example = problems["humaneval"]
    broken = type(example)(
        id="humaneval/broken",
        question=example.question,
        gold=example.meta["prompt"] + "    return -1.0\n",
        meta=example.meta,
    )
    calls, why = task.record_calls(broken)
    assert calls is None and "does not pass its tests" in why
    assert task.execute(fence("def mean_abs(xs):\n    return sum(map(abs, xs)) / len(xs)"), broken).passed
    assert any("one process" in str(w.message) for w in recwarn)


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, where the sandbox switches uid")
def test_code_tasks_work_as_root_with_the_project_interpreter(problems):
    # The plus tests import numpy: as root the sandbox must run an interpreter that has it.
    assert (
        get_task("humanevalplus")
        .execute(fence("def truncate_number(number):\n    return number % 1.0"), problems["humanevalplus"])
        .passed
    )
