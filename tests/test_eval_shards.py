"""Evaluation sharded across processes: each takes its share, the records merge into one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffmas.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def eval_argv(model_dir: str, out: Path, *extra: str) -> list[str]:
    # Batch-invariant: a problem's answer does not depend on which others share its batch, so the
    # shards' answers are those of one unsharded run.
    return ["eval", "--model", model_dir, "--dtype", "float32", "--batch-invariant", "--task", "synthetic-arith",
            "--limit", "7", "--method", "latent_mas", "--latent-steps", "1", "--max-new-tokens", "5",
            "--batch-size", "2", "--out", str(out), *extra]  # fmt: skip


def outputs(path: Path) -> dict[str, str]:
    return {r["id"]: r["output"] for r in map(json.loads, path.read_text().splitlines())}


def test_two_processes_share_the_problems_and_merge_into_one_run(tiny_model_dir, tmp_path):
    assert main(eval_argv(tiny_model_dir, tmp_path / "one")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "diffmas", *eval_argv(tiny_model_dir, tmp_path / "two", "--shard", f"{k}/2")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for k in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    two = tmp_path / "two"
    assert not list(two.glob("records.shard-*"))  # merged by the last shard to finish
    merged = [json.loads(line) for line in (two / "records.jsonl").read_text().splitlines()]
    assert len(merged) == len({r["id"] for r in merged}) == 7  # one record per problem
    assert outputs(two / "records.jsonl") == outputs(tmp_path / "one" / "records.jsonl")
    summary = json.loads((two / "summary.json").read_text())
    assert (
        summary["n"] == 7
        and summary["accuracy"] == json.loads((tmp_path / "one" / "summary.json").read_text())["accuracy"]
    )


def test_shards_resume_on_their_own_and_the_last_one_merges(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(eval_argv(tiny_model_dir, out, "--shard", "1/3")) == 0
    assert not (out / "summary.json").exists()  # others still to come
    assert len((out / "records.shard-1-of-3.jsonl").read_text().splitlines()) == 2  # problems 1 and 4
    # The second shard from torchrun's environment.
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert main(eval_argv(tiny_model_dir, out)) == 0
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert main(eval_argv(tiny_model_dir, out, "--shard", "1/3", "--resume")) == 0  # nothing left to do there
    assert main(eval_argv(tiny_model_dir, out, "--shard", "2/3", "--resume")) == 0
    assert json.loads((out / "summary.json").read_text())["n"] == 7
    assert len(outputs(out / "records.jsonl")) == 7 and not list(out.glob("records.shard-*"))
    # An unsharded resume finds everything done.
    assert main(eval_argv(tiny_model_dir, out, "--resume")) == 0
    assert len((out / "records.jsonl").read_text().splitlines()) == 7


def test_bad_shards_and_mixed_settings_are_refused(tiny_model_dir, tmp_path, capsys):
    for spec in ("2/2", "a/b", "3/1"):
        assert main(eval_argv(tiny_model_dir, tmp_path / "x", "--shard", spec)) == 1
        assert "--shard must be K/N" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(eval_argv(tiny_model_dir, out, "--shard", "0/2")) == 0
    assert main([*eval_argv(tiny_model_dir, out, "--shard", "1/2"), "--max-new-tokens", "6"]) == 1
    assert "different settings" in capsys.readouterr().err
