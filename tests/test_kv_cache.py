"""GrowingLayer: appends into spare capacity without changing a single cached value."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from diffmas.agents import load_system
from diffmas.engine import LM
from diffmas.kv_trace import GrowingLayer
from diffmas.methods import LatentMAS, MethodConfig, SingleAgent

pytestmark = pytest.mark.usefixtures("one_thread")


def kv(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, length, 4, generator=g), torch.randn(batch, 2, length, 4, generator=g)


@torch.no_grad()
def test_appends_write_into_spare_capacity():
    layer, plain = GrowingLayer(), DynamicLayer()
    buffers = set()
    for step, length in enumerate([7] + [1] * 60 + [13] + [1] * 40):
        k, v = kv(3, length, step)
        keys, values = layer.update(k, v)
        ref_keys, ref_values = plain.update(k, v)
        assert torch.equal(keys, ref_keys) and torch.equal(values, ref_values)
        assert layer.get_seq_length() == plain.get_seq_length()
        buffers.add(layer.buffers["keys"].data_ptr())
        assert layer.buffers["keys"].shape[-2] >= layer.get_seq_length()
    # 102 appends reaching 120 positions: the trace was copied only when capacity ran out.
    assert len(buffers) <= 4


@torch.no_grad()
def test_crop_and_row_selection_keep_values_right():
    layer, plain = GrowingLayer(), DynamicLayer()
    for step, length in enumerate([5, 1, 1, 1]):
        layer.update(*kv(4, length, step))
        plain.update(*kv(4, length, step))
    layer.crop(-2)
    plain.crop(-2)
    buf = layer.buffers["keys"].data_ptr()
    k, v = kv(4, 1, 10)
    keys, _ = layer.update(k, v)  # overwrites the first dropped column
    assert torch.equal(keys, plain.update(k, v)[0]) and layer.buffers["keys"].data_ptr() == buf
    rows = torch.tensor([3, 1])
    layer.batch_select_indices(rows)
    plain.batch_select_indices(rows)
    k, v = kv(2, 1, 11)
    keys, values = layer.update(k, v)
    ref_keys, ref_values = plain.update(k, v)
    assert torch.equal(keys, ref_keys) and torch.equal(values, ref_values)


def test_with_gradients_appends_by_concatenation():
    """In-place writes would change tensors autograd saved: with gradients the plain cat is used."""
    layer = GrowingLayer()
    k0, v0 = (t.requires_grad_() for t in kv(1, 3, 0))
    layer.update(k0, v0)
    keys, values = layer.update(*kv(1, 1, 1))
    assert layer.buffers["keys"] is None and keys.shape[-2] == 4
    (keys.sum() + values.sum()).backward()
    assert torch.equal(k0.grad, torch.ones_like(k0))
    with torch.no_grad():  # earlier entries carry a graph: concatenated, as SharedKVCache.frozen expects
        keys, _ = layer.update(*kv(1, 1, 2))
    assert layer.buffers["keys"] is None and keys.shape[-2] == 5


@pytest.mark.parametrize("method_name", ["single", "latent_mas"])
@torch.no_grad()
def test_greedy_answers_equal_those_of_the_plain_cache(tiny_qwen, monkeypatch, method_name):
    """Prefill, latent steps, decoding, finished rows leaving and batches merging (refill)."""
    lm = LM(*tiny_qwen)
    questions = ["What is 2 + 3?", "Tom has 17 apples and gives 5 away. How many are left?", "x", "2 * 21?"]
    cls = {"single": SingleAgent, "latent_mas": LatentMAS}[method_name]
    system = load_system("sequential") if method_name == "latent_mas" else None
    method = cls(
        lm, MethodConfig(latent_steps=3, max_new_tokens=12, min_new_tokens=0), answer_format="Box it.", system=system
    )

    def answers() -> list[str]:
        got = dict(method.run_stream(questions, batch_size=2, refill=1.0))
        return [got[i].final_text for i in range(len(questions))]

    growing = answers()
    monkeypatch.setattr(GrowingLayer, "update", DynamicLayer.update)
    monkeypatch.setattr(GrowingLayer, "batch_select_indices", DynamicLayer.batch_select_indices)
    assert growing == answers()
