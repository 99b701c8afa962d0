"""Code generation: HumanEval, HumanEval+, MBPP and MBPP+, scored by running tests in the sandbox.

The answer is Python code, usually in a ```python fenced block (maybe several, maybe none).
:meth:`CodeTask.extract_answer` picks the solution and :meth:`CodeTask.execute` scores it in
:mod:`diffmas.sandbox` without letting it judge itself (:mod:`diffmas.tasks.code_calls`: the
reference's calls recorded, the candidate answering them alone, the tests replayed on its
answers), keeping the status (pass/fail/timeout/error) and its reason; :meth:`Task.score` stays
``(prediction, correct)`` like every other task. ``gold`` is the canonical solution as a complete
program. :meth:`CodeTask.build_program` joins a solution with its tests in one program, the way
problems the replay cannot carry are scored.
"""

from __future__ import annotations

import ast
import hashlib
import re
import threading
import warnings
from typing import Any

from diffmas.sandbox import SandboxLimits, SandboxResult, run_program
from diffmas.tasks import code_calls
from diffmas.tasks.base import Example, RowError, Task, register_task, require, require_text

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)  # an unclosed last fence counts
_PYTHON_TAGS = ("", "python", "py", "python3", "py3")
_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(", re.M)
_NUMPY = re.compile(r"^[ \t]*(?:import|from)[ \t]+numpy\b", re.M)
# The reference's recorded calls, by the hash of the reference and its tests (record_calls).
_RECORDED: dict[str, tuple[list | None, str]] = {}
_RECORDED_LOCK = threading.Lock()
_MAX_RECORDED = 4096
RUN_NAME = "solution"  # not "__main__": demo blocks under `if __name__ == "__main__":` stay unrun


def code_blocks(text: str) -> list[str]:
    """Python code blocks in ``text``: fenced python (or untagged) blocks, else the whole text when
    it parses as Python (models sometimes answer with bare code)."""
    fenced = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    blocks = [body for tag, body in fenced if tag in _PYTHON_TAGS and body.strip()]
    if blocks or fenced:
        return blocks
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    return [text] if _DEF.search(text) else []


def select_solution(text: str, entry_point: str | None) -> str | None:
    """The last block that defines ``entry_point`` (later blocks are usually the corrected
    version); without one, the last block (it may be a function body completing the prompt)."""
    blocks = code_blocks(text)
    if not blocks:
        return None
    if entry_point:
        defining = [b for b in blocks if entry_point in _DEF.findall(b)]
        if defining:
            return defining[-1].strip("\n")
    return blocks[-1].strip("\n")


def fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def _text_list(row: dict[str, Any], key: str, required: bool = True) -> list[str]:
    value = row.get(key)
    if value is None and not required:
        return []
    value = require(row, key)
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise RowError(f"field {key!r} is {type(value).__name__}, expected a list of strings")
    return [v for v in value if v.strip()]


def _short_id(task_id: Any) -> str:
    # "HumanEval/0" -> "0", "Mbpp/2" -> "2", 2 -> "2": ids read "humaneval/0", "mbpp/2".
    return str(task_id).strip().rsplit("/", 1)[-1]


class CodeTask(Task):
    family = "code"
    answer_format = "Write the complete Python solution in one ```python code block."
    limits = SandboxLimits(timeout=5.0)

    # ------------------------------------------------------------------ scoring
    def extract_answer(self, text: str, example: Example | None = None) -> str | None:
        entry = example.meta.get("entry_point") if example is not None else None
        return select_solution(text or "", entry)

    # The parts of a problem's programs (the subclasses say how their rows make them).
    def candidate_code(self, solution: str, example: Example) -> str:
        """The solution as a program of its own (whatever it needs from the prompt, no tests)."""
        raise NotImplementedError

    def reference_code(self, example: Example) -> str:
        """The canonical solution as a program of its own."""
        raise NotImplementedError

    def replay_context(self, example: Example) -> str:
        """What the tests may use besides the entry point (the prompt's helpers, imports)."""
        return self.reference_code(example)

    def test_code(self, example: Example) -> str:
        """The tests, ending in the call that runs them."""
        raise NotImplementedError

    def build_program(self, solution: str, example: Example) -> str:
        """Solution and tests in one program (the one-process scoring)."""
        return f"{self.candidate_code(solution, example)}\n\n\n{self.test_code(example)}"

    def _sandbox(self, program: str, data: bool = False) -> SandboxResult:
        requires = ("numpy",) if _NUMPY.search(program) else ()  # e.g. the plus tests' float checks
        return run_program(program, self.limits, run_name=RUN_NAME, requires=requires, data=data)

    def record_calls(self, example: Example) -> tuple[list | None, str]:
        """The entry point's calls when the reference runs the tests (once per problem), or None
        and why the problem must be scored in one process."""
        key = hashlib.sha256((self.reference_code(example) + self.test_code(example)).encode()).hexdigest()
        with _RECORDED_LOCK:
            if key in _RECORDED:
                return _RECORDED[key]
        entry = example.meta["entry_point"]
        run = self._sandbox(
            code_calls.record_program(self.reference_code(example), entry, self.test_code(example)), True
        )
        try:
            if not run.passed:
                raise ValueError(f"the reference solution does not pass its tests ({run.status}: {run.reason})")
            calls = code_calls.decode_data(run.data, "the reference's run")
            if code_calls.opaque_arguments(calls):
                raise ValueError("the tests pass the entry point values that are not plain data")
            found = (calls, "")
        except ValueError as exc:
            warnings.warn(f"{example.id}: {exc}; scored with solution and tests in one process", stacklevel=3)
            found = (None, str(exc))
        with _RECORDED_LOCK:
            if len(_RECORDED) >= _MAX_RECORDED:
                _RECORDED.clear()
            _RECORDED[key] = found
        return found

    def run_solution(self, solution: str, example: Example) -> SandboxResult:
        """Score ``solution`` on the example's tests without letting it judge itself."""
        calls, _ = self.record_calls(example)
        if calls is None:
            return self._sandbox(self.build_program(solution, example))
        entry = example.meta["entry_point"]
        answer = self._sandbox(code_calls.answer_program(self.candidate_code(solution, example), entry, calls), True)
        if not answer.passed:
            return answer
        try:
            answers = code_calls.decode_data(answer.data, "the solution")
            problem = code_calls.check_answers(answers, len(calls))
        except ValueError as exc:
            problem = str(exc)
        if problem:
            return SandboxResult("error", problem, answer.stdout, answer.stderr, answer.seconds, answer.returncode)
        replay = self._sandbox(
            code_calls.replay_program(self.replay_context(example), entry, self.test_code(example), calls, answers)
        )
        seconds = round(answer.seconds + replay.seconds, 3)
        return SandboxResult(replay.status, replay.reason, answer.stdout, answer.stderr, seconds, replay.returncode)

    def execute(self, text: str, example: Example) -> SandboxResult:
        """The sandbox result of a model output: status pass/fail/timeout/error and its reason."""
        solution = self.extract_answer(text or "", example)
        if solution is None:
            return SandboxResult("error", "no Python code found in the output")
        return self.run_solution(solution, example)

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        return prediction is not None and self.run_solution(prediction, example).passed

    def score(self, text: str, example: Example) -> tuple[str | None, bool]:
        prediction = self.extract_answer(text or "", example)
        if prediction is None:
            return None, False
        return prediction, self.run_solution(prediction, example).passed

    def training_target(self, example: Example) -> str:
        return fenced(example.gold)


# ---------------------------------------------------------------------- HumanEval
class HumanEval(CodeTask):
    splits = ("test",)
    default_split = "test"

    def __init__(self, name: str, hub_id: str, files: tuple[str, ...], timeout: float):
        self.name = name
        self.hub_id = hub_id
        self.data_subdir = name
        self.local_files = {"test": files}
        self.limits = SandboxLimits(timeout=timeout)

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        prompt = require_text(row, "prompt")
        entry = require_text(row, "entry_point").strip()
        test = require_text(row, "test")
        if "def check" not in test:
            raise RowError("test does not define check(candidate)")
        body = require_text(row, "canonical_solution")
        question = f"Complete the following Python function:\n\n{fenced(prompt)}"
        task_id = row.get("task_id", index)
        meta = {"task_id": str(task_id), "prompt": prompt, "entry_point": entry, "test": test}
        return Example(id=f"{self.name}/{_short_id(task_id)}", question=question, gold=prompt + body, meta=meta)

    def candidate_code(self, solution: str, example: Example) -> str:
        prompt, entry = example.meta["prompt"], example.meta["entry_point"]
        if entry in _DEF.findall(solution):
            # A whole function: the prompt first (its imports and helpers; its docstring-only stub
            # is valid Python), then the answer's definition replaces the stub.
            return f"{prompt.rstrip()}\n\n{solution}"
        return prompt + solution  # a completion of the prompt's function body

    def reference_code(self, example: Example) -> str:
        return example.gold

    def replay_context(self, example: Example) -> str:
        return example.meta["prompt"]  # its helpers (e.g. encode for decode); its stub is replaced

    def test_code(self, example: Example) -> str:
        return f"{example.meta['test']}\n\ncheck({example.meta['entry_point']})\n"


register_task(HumanEval("humaneval", "openai/openai_humaneval", ("HumanEval.jsonl.gz", "HumanEval.jsonl"), 5.0))
register_task(
    HumanEval(
        "humanevalplus",
        "evalplus/humanevalplus",
        ("HumanEvalPlus-OriginFmt.jsonl.gz", "HumanEvalPlus.jsonl.gz", "HumanEvalPlus-OriginFmt.jsonl"),
        20.0,
    )
)


# ---------------------------------------------------------------------- MBPP
# The original MBPP task-id ranges of each split; the sanitized file holds all four together.
MBPP_SPLIT_IDS = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}


def mbpp_split_of(task_id: Any) -> str | None:
    try:
        number = int(_short_id(task_id))
    except ValueError:
        return None
    return next((s for s, ids in MBPP_SPLIT_IDS.items() if number in ids), None)


class MBPP(CodeTask):
    splits = ("train", "validation", "test", "prompt")
    split_aliases = {"dev": "validation", "val": "validation"}
    default_split = "test"
    by_task_id = True  # select the split's rows by task id in files that hold several splits

    def __init__(
        self,
        name: str,
        hub_id: str,
        hub_config: str | None,
        files: tuple[str, ...],
        timeout: float,
        test_field: str | None,
        splits: tuple[str, ...] | None = None,
    ):
        self.name = name
        self.hub_id, self.hub_config = hub_id, hub_config
        self.data_subdir = name
        self.test_field = test_field  # MBPP+: one test program in "test"; MBPP: the test_list asserts
        if splits is not None:
            self.splits, self.split_aliases, self.by_task_id = splits, {}, False
        self.local_files = {split: files for split in self.splits}
        self.limits = SandboxLimits(timeout=timeout)

    def raw_rows(self, split: str, data_path: str | None):
        rows, source = super().raw_rows(split, data_path)
        if self.by_task_id and self.hub_id and not source.startswith(self.hub_id):
            # A local file; keep bad rows (to be counted as skipped) and rows of this split.
            rows = [r for r in rows if r.row is None or mbpp_split_of(r.row.get("task_id")) in (split, None)]
        return rows, source

    def parse_row(self, row: dict[str, Any], index: int, split: str, seed: int) -> Example:
        description = require_text(row, "prompt" if "prompt" in row else "text").strip()
        if description.startswith('"""') and description.endswith('"""'):  # MBPP+ quotes its prompt
            description = description.strip('"').strip()
        code = require_text(row, "code")
        tests = _text_list(row, "test_list", required=self.test_field is None)
        imports = _text_list(row, "test_imports", required=False)
        test_program = require_text(row, self.test_field) if self.test_field else "\n".join(tests)
        if not test_program.strip():
            raise RowError("no tests")
        defined = _DEF.findall(code)
        if not defined:
            raise RowError("code defines no function")
        called = " ".join(tests) or test_program
        entry = next((n for n in defined if re.search(rf"\b{re.escape(n)}\s*\(", called)), defined[-1])
        shown = "\n".join(tests[:3])
        question = description + (
            f"\n\nYour code should pass these tests:\n{shown}" if shown else f"\n\nName the function `{entry}`."
        )
        task_id = row.get("task_id", index)
        meta = {"task_id": str(task_id), "entry_point": entry, "test_imports": imports, "test": test_program}
        return Example(id=f"{self.name}/{_short_id(task_id)}", question=question, gold=code, meta=meta)

    def candidate_code(self, solution: str, example: Example) -> str:
        return f"{chr(10).join(example.meta['test_imports'])}\n\n{solution}"

    def reference_code(self, example: Example) -> str:
        return self.candidate_code(example.gold, example)

    def test_code(self, example: Example) -> str:
        return f"{example.meta['test']}\n"


register_task(
    MBPP(
        "mbpp",
        "google-research-datasets/mbpp",
        "sanitized",
        ("sanitized-mbpp.json", "mbpp.jsonl", "sanitized-mbpp.jsonl"),
        5.0,
        None,
    )
)
register_task(
    MBPP(
        "mbppplus",
        "evalplus/mbppplus",
        None,
        ("MbppPlus-OriginFmt.jsonl.gz", "MbppPlus.jsonl.gz", "MbppPlus-OriginFmt.jsonl"),
        20.0,
        "test",
        splits=("test",),
    )
)
