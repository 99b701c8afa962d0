"""Training through accelerate: its mixed precision (autocast products, float32 adapters), its
launch settings as defaults, bit-exact resume under autocast, and the backends it cannot drive
refused with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffmas.errors import DiffMASError
from diffmas.train.config import TrainConfig
from diffmas.train.distributed import Distributed, resolve_mixed_precision
from diffmas.train.trainer import Trainer


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> str:
    return tiny_model_dir


def settings(model_dir: str, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=model_dir,
        dtype="float32",
        task="synthetic-arith",
        limit=16,
        topology="sequential",
        latent_steps=2,
        lora_rank=4,
        lora_dropout=0.0,
        lr=1e-3,
        batch_size=2,
        max_steps=4,
        save_every=2,
        out=str(out),
    )
    return TrainConfig(**{**base, **kw})


def adapter_weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.params]


def test_bf16_runs_the_products_in_bfloat16_and_keeps_float32_adapters(model_dir, tmp_path):
    trainer = Trainer(settings(model_dir, tmp_path / "bf16", mixed_precision="bf16"), progress=False)
    seen = []
    q_proj = trainer.lm.model.get_decoder().layers[0].self_attn.q_proj
    hook = q_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    mixed = trainer.train_step()
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(
        p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for p in trainer.params
    )
    assert next(trainer.lm.model.parameters()).dtype == torch.float32  # the weights keep --dtype

    plain = Trainer(settings(model_dir, tmp_path / "fp32"), progress=False).train_step()
    assert plain["loss"] != mixed["loss"] and abs(plain["loss"] - mixed["loss"]) < 0.05 * plain["loss"]


def test_accelerate_launch_setting_is_the_default_and_recorded(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    out = tmp_path / "run"
    trainer = Trainer(settings(model_dir, out, max_steps=1), progress=False)
    assert trainer.cfg.mixed_precision == "bf16" and trainer.dist.mixed_precision == "bf16"
    trainer.train()
    assert json.loads((out / "final" / "config.json").read_text())["mixed_precision"] == "bf16"
    # The flag wins over the launch setting.
    assert (
        Trainer(settings(model_dir, tmp_path / "no", mixed_precision="no"), progress=False).cfg.mixed_precision == "no"
    )


def test_resume_under_bf16_autocast_is_bit_exact(model_dir, tmp_path):
    straight = Trainer(settings(model_dir, tmp_path / "a", mixed_precision="bf16"), progress=False)
    straight.train()
    first = Trainer(settings(model_dir, tmp_path / "b", mixed_precision="bf16", until_step=2), progress=False)
    assert not first.train()["finished"]
    resumed = Trainer(settings(model_dir, tmp_path / "b", mixed_precision="bf16", resume=True), progress=False)
    assert resumed.train()["finished"]
    for a, b in zip(adapter_weights(straight), adapter_weights(resumed), strict=True):
        assert torch.equal(a, b)


def test_reader_traces_are_keyed_by_the_precision(model_dir, tmp_path):
    common = dict(grad_through="none", comm_adapter=False, trace_dir=str(tmp_path / "traces"), max_steps=1)
    Trainer(settings(model_dir, tmp_path / "no", **common), progress=False).train()
    Trainer(settings(model_dir, tmp_path / "bf16", mixed_precision="bf16", **common), progress=False).train()
    folders = [p for p in (tmp_path / "traces").iterdir() if p.is_dir()]
    assert len(folders) == 2  # autocast traces never stand in for full-precision ones


def test_fp16_without_a_gpu_is_refused():
    with pytest.raises(DiffMASError, match="fp16 mixed precision needs a GPU"):
        resolve_mixed_precision("fp16", "cpu")
    with pytest.raises(DiffMASError, match="must be one of no, bf16, fp16"):
        resolve_mixed_precision("fp8", "cpu")


@pytest.mark.parametrize(("env", "name"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_sharding_backends_are_refused_with_what_to_do(env, name, monkeypatch):
    monkeypatch.setenv(env, "true")
    with pytest.raises(DiffMASError, match=f"selects {name}.*accelerate launch --multi_gpu"):
        Distributed.from_env("cpu")
