"""Your own data: field mappings for built-in tasks, tasks from YAML files and from Python modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from diffmas.cli import main
from diffmas.errors import DataError, DiffMASError
from diffmas.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "configs" / "tasks"
pytestmark = pytest.mark.usefixtures("one_thread")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_field_mapping_reads_a_file_with_other_names(tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", [{"prompt": "2+3?", "solution": "2+3=5 #### 5"}] * 3)
    task = get_task("gsm8k")
    with pytest.raises(DataError, match=r"the file's fields are prompt, solution: map them .* --fields question=FIELD"):
        task.load(data_path=str(data))
    loaded = task.load(data_path=str(data), fields="question=prompt,answer=solution")
    assert len(loaded.examples) == 3 and loaded.examples[0].question == "2+3?" and loaded.examples[0].gold == "5"
    with pytest.raises(DataError, match=r"mapped fields \['query'\] are not in the file"):
        task.load(data_path=str(data), fields="question=query,answer=solution")
    with pytest.raises(DataError, match="expected TASK_FIELD=FILE_FIELD"):
        task.load(data_path=str(data), fields="question")


def test_eval_takes_the_mapping_and_keeps_it_on_resume(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "mine.jsonl", [{"prompt": f"{i}+1?", "solution": f"#### {i + 1}"} for i in range(3)])
    argv = ["eval", "--model", tiny_model_dir, "--dtype", "float32", "--task", "gsm8k", "--data-path", str(data),
            "--method", "single", "--max-new-tokens", "4", "--out", str(tmp_path / "ev")]  # fmt: skip
    assert main([*argv, "--fields", "question=prompt,answer=solution"]) == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n"] == 3
    assert main([*argv, "--resume"]) == 1  # the mapping is part of what the records were made with
    assert "fields" in capsys.readouterr().err


def test_task_files_of_every_answer_type_load_and_score_their_references():
    expected = {
        "shop-arith.yaml": ("math", 4),
        "colours-choice.yaml": ("multiple_choice", 3),
        "tiny-code.yaml": ("code", 2),
    }
    for name, (family, n) in expected.items():
        task = get_task(str(TASKS / name))
        examples = task.load().examples
        assert task.family == family and len(examples) == n
        assert all(task.score(task.training_target(ex), ex)[1] for ex in examples), name
    choice = get_task(str(TASKS / "colours-choice.yaml")).load().examples
    assert [ex.gold for ex in choice] == ["A", "B", "B"]  # by text, by index, by letter
    assert get_task("shop-arith").name == "shop-arith"  # registered under its name once loaded


def test_every_command_takes_a_task_file(tiny_model_dir, tmp_path, capsys):
    task = str(TASKS / "shop-arith.yaml")
    common = ["--model", tiny_model_dir, "--dtype", "float32", "--task", task]
    assert main(["eval", *common, "--method", "latent_mas", "--latent-steps", "1", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["task"] == task
    assert main(["run", *common, "--method", "single", "--max-new-tokens", "3", "--question", "1+1?"]) == 0
    assert main(["train", *common, "--method", "single_sft", "--split", "test", "--max-steps", "1", "--batch-size", "2",
                 "--lora-rank", "2", "--out", str(tmp_path / "tr")]) == 0  # fmt: skip
    assert (tmp_path / "tr" / "final" / "manifest.json").is_file()


def test_bad_task_files_are_refused_with_what_to_fix(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "1"}])
    cases = {
        "answer: number\nfiles: {test: d.jsonl}\nfeilds: {}\n": "unknown keys \\['feilds'\\]",
        "answer: integer\nfiles: {test: d.jsonl}\n": "'answer' must be one of number, math, choice, code",
        "answer: number\nfiles: {test: missing.jsonl}\n": "the test file .*missing.jsonl does not exist",
        "answer: number\n": "'files' must map splits to data files",
        "name: gsm8k\nanswer: number\nfiles: {test: d.jsonl}\n": "already registered by GSM8K; give it another name",
    }
    for i, (text, message) in enumerate(cases.items()):
        (tmp_path / f"t{i}.yaml").write_text(text)
        with pytest.raises((DiffMASError, DataError), match=message):
            get_task(str(tmp_path / f"t{i}.yaml"))
    write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "seven"}])
    (tmp_path / "bad.yaml").write_text("answer: number\nfiles: {test: bad.jsonl}\n")
    with pytest.raises(DataError, match="is not a number"):
        get_task(str(tmp_path / "bad.yaml")).load()


def test_a_task_defined_in_python_is_usable_by_name(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(
        "from diffmas.tasks import MathTask, Example\n"
        "class Doubling(MathTask):\n"
        "    name = 'doubling'\n"
        "    splits = ('test',)\n"
        "    def load(self, split=None, data_path=None, limit=None, seed=0, offset=None, fields=None):\n"
        "        from diffmas.tasks.base import LoadResult\n"
        "        ex = [Example(f'doubling/{i}', f'Double {i}.', str(2 * i)) for i in range(3)]\n"
        "        return LoadResult(ex, 0, [], 'generated')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = get_task("my_tasks:Doubling")
    assert task.name == "doubling" and len(task.load().examples) == 3
    assert get_task("doubling") is task
    with pytest.raises(DiffMASError, match="cannot import"):
        get_task("no_such_module_here:Task")
    sys.modules.pop("my_tasks", None)


def test_default_output_folders_name_a_task_file_by_its_name():
    from diffmas.evaluate import EvalConfig

    cfg = EvalConfig(task=str(TASKS / "shop-arith.yaml"), method="single")
    assert str(cfg.out_dir()) == "runs/shop-arith-single"
    assert str(EvalConfig(task="pkg.tasks:Mine", method="single").out_dir()) == "runs/Mine-single"
    assert str(EvalConfig(task="gsm8k", method="single").out_dir()) == "runs/gsm8k-single"
