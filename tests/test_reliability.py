"""Faults: runs killed with SIGKILL at random moments, damaged checkpoints, NaN losses, and
determinism, on tiny models."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffmas import checkpoint as ckpt
from diffmas.cli import main
from diffmas.errors import DiffMASError
from diffmas.train.config import TrainConfig
from diffmas.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "configs" / "train-tiny.yaml")
pytestmark = pytest.mark.usefixtures("one_thread")


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return {
        f"{f.relative_to(path)}:{k}": t
        for f in sorted(path.rglob("*.safetensors"))
        for k, t in load_file(str(f)).items()
    }


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffmas", *args]


def quiet_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def kill_when(proc: subprocess.Popen, ready, rng: random.Random, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` a random moment after ``ready()`` turns true; False if it finished first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run made no progress")
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.4))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def steps_logged(out: Path) -> int:
    try:
        return sum(1 for line in (out / "log.jsonl").read_text().splitlines() if line.endswith("}"))
    except FileNotFoundError:
        return 0


def test_training_killed_again_and_again_ends_like_an_uninterrupted_run(tiny_model_dir, tmp_path):
    flags = [
        "train",
        "--config",
        TINY_CONFIG,
        "--model",
        tiny_model_dir,
        "--max-steps",
        "12",
        "--save-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--comm-dropout",
        "0.3",
        "--lora-dropout",
        "0.1",
    ]
    straight = tmp_path / "straight"
    subprocess.run(cli(*flags, "--out", str(straight)), env=quiet_env(), check=True, capture_output=True)
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills, launches = 0, 0
    while not (out / "final").exists():
        launches += 1
        assert launches < 40, "the run never finished"
        resume = ["--resume"] if out.exists() else []
        before = steps_logged(out)
        proc = subprocess.Popen(
            cli(*flags, "--out", str(out), *resume), env=quiet_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        # Kill at a random moment once the run has logged a new step (or, on every third
        # launch, at a random moment of its start-up), until five kills have landed.
        if kills < 5 and kill_when(
            proc, (lambda: True) if launches % 3 == 0 else (lambda: steps_logged(out) > before), rng
        ):
            kills += 1
            continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert kills >= 5
    assert [r["step"] for r in lines(out / "log.jsonl")] == list(range(1, 13))
    a, b = tensors(straight / "final"), tensors(out / "final")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["loss"] for r in lines(out / "log.jsonl")] == [r["loss"] for r in lines(straight / "log.jsonl")]


def test_a_damaged_checkpoint_is_skipped_with_a_warning(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--config",
        TINY_CONFIG,
        "--model",
        tiny_model_dir,
        "--out",
        str(out),
        "--save-every",
        "1",
        "--keep-checkpoints",
        "0",
    ]
    assert main([*args, "--max-steps", "3"]) == 0
    final = out / "final"
    assert ckpt.damage(final) is None
    optimizer = final / ckpt.STATE
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # truncated, e.g. by a full disk or a bad copy
    with pytest.warns(UserWarning, match="final is damaged"):
        assert ckpt.latest_checkpoint(out, verify=True) == out / "checkpoints" / "step-0000002"
    adapter = out / "checkpoints" / "step-0000002" / "adapters" / "Planner" / "adapter_model.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    adapter.write_bytes(bytes(data))
    assert "hash" in ckpt.damage(adapter.parents[2])
    with pytest.warns(UserWarning, match="damaged"):
        assert main([*args, "--max-steps", "4", "--resume"]) == 0
    assert [r["step"] for r in lines(out / "log.jsonl")] == [1, 2, 3, 4]  # resumed from step 1
    assert json.loads((out / "final" / "manifest.json").read_text())["step"] == 4


REAL_LOSS = Trainer.loss


def poison(first_step: int, value: float, once: bool = False):
    """Trainer.loss multiplied by ``value`` (nan or inf) from ``first_step`` on (or at it only)."""

    def loss(self, batch):
        out = REAL_LOSS(self, batch)
        if self.step == first_step or (self.step > first_step and not once):
            out.loss = out.loss * value
        return out

    return loss


def test_nan_losses_are_skipped_then_the_run_stops_with_a_usable_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    cfg = TrainConfig(
        model=tiny_model_dir,
        dtype="float32",
        task="synthetic-arith",
        limit=16,
        latent_steps=1,
        lora_rank=4,
        lora_dropout=0.0,
        batch_size=2,
        max_steps=10,
        save_every=100,
        max_bad_steps=3,
        out=str(tmp_path / "run"),
    )
    monkeypatch.setattr(Trainer, "loss", poison(2, float("nan")))
    trainer = Trainer(cfg, progress=False)
    with pytest.raises(DiffMASError, match="3 steps in a row") as err:
        trainer.train()
    assert "--resume" in str(err.value)
    log = lines(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert [("skipped" in r) for r in log] == [False, False, True, True, True]
    assert "loss is nan" in log[2]["skipped"]
    saved = ckpt.latest_checkpoint(tmp_path / "run", verify=True)
    assert saved.name == "step-0000005"
    assert all(torch.isfinite(t).all() for t in tensors(saved).values())
    assert all(torch.isfinite(p).all() for p in trainer.params)
    # A single bad step in between good ones is skipped and training goes on.
    monkeypatch.setattr(Trainer, "loss", poison(1, float("inf"), once=True))
    cfg2 = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "once"), "max_steps": 3})
    Trainer(cfg2, progress=False).train()
    assert [("skipped" in r) for r in lines(tmp_path / "once" / "log.jsonl")] == [False, True, False]


def test_same_seed_same_loss_curve_and_same_greedy_answers(tiny_model_dir, tmp_path):
    curves, answers = [], []
    for run in ("a", "b"):
        out = tmp_path / run
        assert (
            main(
                [
                    "train",
                    "--config",
                    TINY_CONFIG,
                    "--model",
                    tiny_model_dir,
                    "--out",
                    str(out),
                    "--comm-dropout",
                    "0.5",
                    "--lora-dropout",
                    "0.2",
                ]
            )
            == 0
        )
        curves.append([(r["loss"], r["grad_norm"]) for r in lines(out / "log.jsonl")])
        ev = tmp_path / f"eval-{run}"
        assert (
            main(
                [
                    "eval",
                    "--model",
                    tiny_model_dir,
                    "--dtype",
                    "float32",
                    "--task",
                    "synthetic-arith",
                    "--limit",
                    "4",
                    "--batch-size",
                    "2",
                    "--max-new-tokens",
                    "6",
                    "--latent-steps",
                    "2",
                    "--method",
                    "diffmas",
                    "--adapter",
                    str(out),
                    "--out",
                    str(ev),
                ]
            )
            == 0
        )
        answers.append([(r["id"], r["output"]) for r in lines(ev / "records.jsonl")])
    assert curves[0] == curves[1] and len(curves[0]) == 4
    assert answers[0] == answers[1] and len(answers[0]) == 4


def test_eval_killed_mid_run_resumes_with_one_record_per_example(tiny_model_dir, tmp_path):
    out = tmp_path / "ev"
    args = [
        "eval",
        "--model",
        tiny_model_dir,
        "--dtype",
        "float32",
        "--task",
        "synthetic-arith",
        "--limit",
        "24",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "8",
        "--agent-max-new-tokens",
        "4",
        "--method",
        "text_mas",
        "--out",
        str(out),
    ]
    rng = random.Random(1)
    records = out / "records.jsonl"

    def written() -> int:
        return len(records.read_text().splitlines()) if records.exists() else 0

    kills = 0
    for attempt in range(30):
        before = written()
        proc = subprocess.Popen(
            cli(*args, *(["--resume"] if attempt else [])),
            env=quiet_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if kills < 3 and kill_when(proc, lambda: written() > before, rng):
            kills += 1
            continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        break
    assert kills == 3
    ids = [r["id"] for r in lines(records)]
    assert len(ids) == 24 and len(set(ids)) == 24
