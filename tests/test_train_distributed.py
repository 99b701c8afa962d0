"""Data-parallel training: two CPU processes (gloo) on a tiny model end with identical adapters,
equal to one process accumulating the same two micro-batches."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from diffmas.models import build_tiny_model

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def settings(model_dir: str, out: str, **kw):
    from diffmas.train.config import TrainConfig

    base = dict(
        model=model_dir,
        dtype="float32",
        task="synthetic-arith",
        limit=16,
        topology="sequential",
        latent_steps=1,
        lora_rank=4,
        lora_dropout=0.0,
        lr=1e-3,
        batch_size=1,
        max_steps=3,
        save_every=2,
        out=out,
    )
    return TrainConfig(**{**base, **kw})


def weights(trainer) -> dict[str, torch.Tensor]:
    out = {
        f"{a}/{i}": p.detach().clone()
        for a in trainer.adapters.names
        for i, p in enumerate(trainer.adapters.parameters(a))
    }
    out["comm"] = trainer.comm.weight.detach().clone()
    return out


def _worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)
    from diffmas.train.trainer import Trainer

    try:
        trainer = Trainer(settings(model_dir, out), progress=False)
        trainer.train()
        torch.save(weights(trainer), Path(out) / f"weights-rank{rank}.pt")
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_identical_adapters(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_dir = tmp_path / "tiny"
        model, tokenizer = build_tiny_model("qwen2", seed=0)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        out = tmp_path / "dp"
        torch.multiprocessing.start_processes(
            _worker, args=(2, free_port(), str(model_dir), str(out)), nprocs=2, join=True, start_method="spawn"
        )
        rank0 = torch.load(out / "weights-rank0.pt")
        rank1 = torch.load(out / "weights-rank1.pt")
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), key
        log = (out / "log.jsonl").read_text().splitlines()
        assert len(log) == 3  # rank 0 alone writes the log
        assert (out / "final" / "rng-1.pt").is_file()  # every rank's RNG state is checkpointed

        # One process accumulating the same two micro-batches takes the same steps.
        from diffmas.train.trainer import Trainer

        single = Trainer(settings(str(model_dir), str(tmp_path / "one"), grad_accum=2), progress=False)
        single.train()
        alone = weights(single)
        for key in rank0:
            assert torch.equal(alone[key], rank0[key]), key
    finally:
        torch.set_num_threads(threads)


def test_accelerate_launch_runs_two_processes(tmp_path):
    """The README's `accelerate launch` line, on CPU: accelerate's multi-process launcher (torchrun
    underneath) with gloo. The trainer itself checks at the end that both ranks hold the same
    adapters and exits non-zero otherwise."""
    import shutil
    import subprocess
    import sys

    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed")
    model_dir = tmp_path / "tiny"
    model, tokenizer = build_tiny_model("qwen2", seed=0)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "acc"
    config = Path(__file__).resolve().parents[1] / "configs" / "train-tiny.yaml"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }  # no user accelerate config file can change the launch
    cmd = [
        launcher,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "diffmas",
        "train",
        "--config",
        str(config),
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--max-steps",
        "2",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "final" / "rng-0.pt").is_file() and (out / "final" / "rng-1.pt").is_file()
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


def test_a_launch_that_starts_one_of_several_processes_is_named(monkeypatch, caplog):
    """`accelerate launch --num_processes 2` without --multi_gpu runs one process: say so."""
    import logging

    from diffmas.train.distributed import Distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with caplog.at_level(logging.INFO, logger="diffmas"):
        assert Distributed.from_env("cpu").world == 1
    assert "started 1 process although more were asked for" in caplog.text and "--multi_gpu" in caplog.text
    caplog.clear()
    monkeypatch.delenv("MASTER_ADDR")
    with caplog.at_level(logging.INFO, logger="diffmas"):
        Distributed.from_env("cpu")
    assert "although" not in caplog.text and "training on 1 process" in caplog.text
