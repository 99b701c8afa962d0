"""A training step keeps the device busy: no host synchronisation per latent step, token or row.

On the CPU a synchronisation cannot be seen, so the calls that force one on a GPU (a tensor read
into Python: ``item``, ``tolist``, ``bool``, ``int``, ``float``, ``nonzero``) are counted while the
loss and its backward pass run; their number must not grow with the latent steps or the batch.
tests/test_cuda.py checks the same step with CUDA's own sync detector.
"""

from __future__ import annotations

import collections
import traceback
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from diffmas.train.config import TrainConfig
from diffmas.train.trainer import Trainer

FORCING = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")


@contextmanager
def counting_syncs():
    """Count the Python-level calls that read a tensor's values on the host, by caller."""
    counts: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in FORCING}

    def counted(name):
        def call(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            counts[f"{name} at {Path(caller.filename).name}:{caller.lineno}"] += 1
            return originals[name](self, *args, **kwargs)

        return call

    try:
        for name in FORCING:
            setattr(torch.Tensor, name, counted(name))
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def syncs_of_a_step(model_dir: str, tmp_path: Path, grad_through: str, latent_steps: int, batch: int):
    cfg = TrainConfig(
        model=model_dir,
        dtype="float32",
        task="synthetic-arith",
        limit=8,
        topology="sequential",
        latent_steps=latent_steps,
        lora_rank=4,
        lora_dropout=0.0,
        batch_size=batch,
        max_steps=2,
        grad_through=grad_through,
        comm_adapter=grad_through != "none",
        trace_dir=str(tmp_path / "traces"),
        out=str(tmp_path / f"{grad_through}-{latent_steps}-{batch}"),
    )
    trainer = Trainer(cfg, progress=False)
    items = [trainer.items[i] for i in range(batch)]
    trainer.loss(items).loss.backward()  # first pass: reader training builds and stores its traces
    with counting_syncs() as counts:
        trainer.loss(items).loss.backward()
    return counts


@pytest.mark.parametrize("grad_through", ["full", "none"])
def test_syncs_do_not_grow_with_latent_steps_or_batch(tiny_model_dir, tmp_path, grad_through):
    base = syncs_of_a_step(tiny_model_dir, tmp_path, grad_through, latent_steps=2, batch=2)
    more_steps = syncs_of_a_step(tiny_model_dir, tmp_path, grad_through, latent_steps=6, batch=2)
    more_rows = syncs_of_a_step(tiny_model_dir, tmp_path, grad_through, latent_steps=2, batch=4)
    assert sum(base.values()) <= 6, dict(base)  # per step: masks at prefill, a fingerprint per upstream agent
    assert more_steps == base, (dict(base), dict(more_steps))
    assert more_rows == base, (dict(base), dict(more_rows))


def test_the_counter_sees_a_read():
    with counting_syncs() as counts:
        torch.ones(2).sum().item()
        bool(torch.zeros(1).any())
    assert sum(counts.values()) == 2
