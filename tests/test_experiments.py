"""experiments/run.py: an experiment folder's steps run in order, resumable, on a tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("experiments_run", ROOT / "experiments" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(folder: Path, tiny_model_dir: str, runs: Path) -> Path:
    common = {"model": tiny_model_dir, "dtype": "float32", "task": "synthetic-arith"}
    evals = {**common, "split": "test", "limit": 3, "max_new_tokens": 4, "latent_steps": 1}
    steps = [
        {"train": {"name": "diffmas", "config": str(ROOT / "configs" / "train-tiny.yaml"), **common}},
        {"eval": {"name": "single", "method": "single", **evals}},
        {"eval": {"name": "diffmas", "method": "diffmas", "adapter": "@train:diffmas", **evals}},
        {"compare": {}},
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "experiment.yaml").write_text(yaml.safe_dump({"runs": str(runs), "steps": steps}))
    return folder


def test_steps_run_in_order_and_resume(runner, tiny_model_dir, tmp_path, capsys):
    folder = write(tmp_path / "exp", tiny_model_dir, tmp_path / "runs")
    assert runner.main([str(folder)]) == 0
    assert (tmp_path / "runs" / "train-diffmas" / "final" / "manifest.json").exists()
    for row in ("single", "diffmas"):
        summary = json.loads((folder / "results" / row / "summary.json").read_text())
        assert summary["n"] == 3 and summary["method"] == row
    assert "| diffmas" in (folder / "results" / "compare" / "comparison.md").read_text()
    out = capsys.readouterr().out
    assert "train:diffmas" in out and "ok" in out
    # Again: training is finished, the evaluations have every record, compare runs again.
    assert runner.main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "== train:diffmas: done" in out
    assert all(
        len((folder / "results" / r / "records.jsonl").read_text().splitlines()) == 3 for r in ("single", "diffmas")
    )


def test_dry_run_and_bad_folders(runner, tiny_model_dir, tmp_path, capsys):
    folder = write(tmp_path / "exp", tiny_model_dir, tmp_path / "runs")
    assert runner.main([str(folder), "--dry-run", "--only", "eval:diffmas"]) == 0
    out = capsys.readouterr().out
    assert f"--adapter {tmp_path / 'runs' / 'train-diffmas'}" in out and "--resume" in out
    assert not (folder / "results").exists()
    spec = yaml.safe_load((folder / "experiment.yaml").read_text())
    spec["steps"][2]["eval"]["adapter"] = "@train:nothing"
    (folder / "experiment.yaml").write_text(yaml.safe_dump(spec))
    assert runner.main([str(folder), "--dry-run"]) == 2
    assert "no train step named 'nothing'" in capsys.readouterr().err
    assert runner.main([str(tmp_path / "missing")]) == 2
    assert "experiment.yaml" in capsys.readouterr().err
    assert runner.main([str(write(tmp_path / "exp2", tiny_model_dir, tmp_path / "r")), "--only", "eval:x"]) == 2


def test_set_and_runs_move_an_experiment_to_another_machine(runner, tiny_model_dir, tmp_path, capsys):
    folder = write(tmp_path / "exp", tiny_model_dir, tmp_path / "runs")
    args = [
        str(folder),
        "--dry-run",
        "--set",
        "device=cuda",
        "--set",
        "eval.batch_size=64",
        "--runs",
        str(tmp_path / "gpu"),
    ]
    assert runner.main(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("== ")]
    train, single, diffmas, compare = lines
    assert "--device cuda" in train and "--batch-size" not in train and f"--out {tmp_path / 'gpu'}" in train
    assert single.count("--device cuda") == 1 and "--batch-size 64" in single
    assert f"--adapter {tmp_path / 'gpu' / 'train-diffmas'}" in diffmas and "--device" not in compare
    assert runner.main([str(folder), "--dry-run", "--set", "eval.limit=2"]) == 0
    out = capsys.readouterr().out
    assert out.count("--limit 2") == 2 and "--limit 3" not in out  # replaced, not added
    for bad in ("device", "nokind.x=1", "=3"):
        assert runner.main([str(folder), "--dry-run", "--set", bad]) == 2
        assert "expected KEY=VALUE" in capsys.readouterr().err


def test_a_collection_is_kept_without_the_dataset_and_resumed_from_it(runner, tiny_model_dir, tmp_path, capsys):
    collect = {
        "name": "teacher",
        "method": "single",
        "model": tiny_model_dir,
        "dtype": "float32",
        "task": "synthetic-arith",
        "limit": 3,
        "max_new_tokens": 4,
    }
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "experiment.yaml").write_text(
        yaml.safe_dump({"runs": str(tmp_path / "runs"), "steps": [{"collect": collect}]})
    )
    assert runner.main([str(folder)]) == 0
    copy = folder / "results" / "collect-teacher"
    rows = [json.loads(line) for line in (copy / "attempts.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("question" not in r and "gold" not in r and r["agents"] for r in rows)
    assert (copy / "collect_config.json").is_file() and (copy / "summary.json").is_file()

    # A new checkout: runs/ is gone. The step starts from the copy and samples nothing again.
    import shutil

    shutil.rmtree(tmp_path / "runs")
    capsys.readouterr()
    assert runner.main([str(folder)]) == 0
    assert "its attempts so far from" in capsys.readouterr().out
    summary = json.loads((tmp_path / "runs" / "collect-teacher" / "summary.json").read_text())
    assert summary["attempts"] == 3 and summary["attempts_this_run"] == 0


COMMITTED = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/experiment.yaml"))


@pytest.mark.parametrize("name", COMMITTED)
def test_every_committed_experiment_plans_commands_its_subcommands_accept(runner, name, monkeypatch, tmp_path):
    """Each step of a committed experiment becomes a command whose flags and config file the
    subcommand takes (a misspelt option or a stale config key fails here, not hours into a run)."""
    from diffmas.cli._common import config_from
    from diffmas.cli.collect import CollectConfig
    from diffmas.cli.collect import parser as collect_parser
    from diffmas.cli.compare import parser as compare_parser
    from diffmas.cli.eval import EvalConfig
    from diffmas.cli.eval import parser as eval_parser
    from diffmas.cli.train import TrainConfig
    from diffmas.cli.train import parser as train_parser

    configs = {
        "collect": (collect_parser, CollectConfig),
        "train": (train_parser, TrainConfig),
        "eval": (eval_parser, EvalConfig),
    }
    monkeypatch.chdir(ROOT)
    folder = Path("experiments") / name
    spec, steps = runner.load(folder)
    spec["runs"] = str(tmp_path / "runs")  # nothing trained: every step plans a command
    plan = runner.commands(folder, spec, steps)
    assert len(plan) == len(steps) and all(argv is not None for _, _, argv in plan)
    for kind, step, argv in plan:
        assert argv[0] == kind
        if kind == "compare":
            compare_parser().parse_args(argv[1:])
            continue
        make, cls = configs[kind]
        if "--adapter" in argv:  # its checks read the trained run: the flags alone here
            make().parse_args(argv[1:])
            continue
        cfg, _ = config_from(make(), cls, argv[1:])
        assert str(cfg.out) == argv[argv.index("--out") + 1], step


def test_a_collect_step_from_another_experiment_shares_its_kept_copy(runner, tiny_model_dir, tmp_path, capsys):
    collect = {"name": "teacher", "method": "single", "model": tiny_model_dir, "dtype": "float32"}
    collect |= {"task": "synthetic-arith", "limit": 2, "max_new_tokens": 4}
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, step in ((first, collect), (second, collect | {"from": str(first)})):
        folder.mkdir()
        spec = {"runs": str(tmp_path / folder.name / "runs"), "steps": [{"collect": step}]}
        (folder / "experiment.yaml").write_text(yaml.safe_dump(spec))
    assert runner.main([str(first)]) == 0
    capsys.readouterr()
    assert runner.main([str(second)]) == 0  # starts from the first's copy: nothing sampled again
    assert f"from {first / 'results' / 'collect-teacher'}" in capsys.readouterr().out
    summary = json.loads((tmp_path / "second" / "runs" / "collect-teacher" / "summary.json").read_text())
    assert summary["attempts_this_run"] == 0 and not (second / "results").exists()

    (second / "experiment.yaml").write_text(
        yaml.safe_dump({"steps": [{"collect": collect | {"from": str(first), "limit": 3}}]})
    )
    assert runner.main([str(second), "--dry-run"]) == 2
    assert "must have the options of its step" in capsys.readouterr().err
    (second / "experiment.yaml").write_text(yaml.safe_dump({"steps": [{"collect": collect | {"from": str(second)}}]}))
    assert runner.main([str(second), "--dry-run"]) == 2
    assert "whose step is from another folder" in capsys.readouterr().err
    (second / "experiment.yaml").write_text(yaml.safe_dump({"steps": [{"collect": collect | {"from": str(tmp_path)}}]}))
    assert runner.main([str(second), "--dry-run"]) == 2
    assert "which has no collect step of that name" in capsys.readouterr().err
