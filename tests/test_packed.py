"""Linear layers on oneDNN-prepacked weights: same results as nn.Linear, training untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffmas.agents import load_system
from diffmas.engine import LM
from diffmas.methods import LatentMAS, MethodConfig, SingleAgent
from diffmas.models import build_tiny_model
from diffmas.models.packed import PackedLinear, pack_linear_layers, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch has no oneDNN packed linear")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_layers_compute_what_linear_computes(dtype):
    layer = nn.Linear(64, 96, dtype=dtype)
    plain = nn.Linear(64, 96, dtype=dtype)
    plain.load_state_dict(layer.state_dict())
    keys = list(layer.state_dict())
    model = nn.Sequential(layer)
    assert pack_linear_layers(model) == 1
    assert isinstance(layer, PackedLinear) and isinstance(layer, nn.Linear)  # PEFT still sees a Linear
    assert list(layer.state_dict()) == keys
    for shape in [(1, 64), (5, 64), (2, 3, 64)]:
        x = torch.randn(*shape, dtype=dtype)
        with torch.inference_mode():
            got = layer(x)
            assert layer._packed is not None  # the packed path ran
            torch.testing.assert_close(got, plain(x), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-3)


def test_training_takes_the_ordinary_path_and_edits_are_followed():
    layer = nn.Linear(16, 8)
    pack_linear_layers(nn.Sequential(layer))
    x = torch.randn(3, 16, requires_grad=True)
    y = layer(x)  # gradients on: F.linear, differentiable, no packed copy made
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None and layer._packed is None
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2)  # e.g. LoRA weights merged into the base weight
        after = layer(x)
    torch.testing.assert_close(after - layer.bias, 2 * (before - layer.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [SingleAgent, LatentMAS])
def test_greedy_answers_unchanged_by_packing(cls):
    cfg = MethodConfig(latent_steps=2, max_new_tokens=8)
    texts = []
    for packed in (False, True):
        model, tokenizer = build_tiny_model("qwen2", seed=0, dtype=torch.float32)
        if packed:
            assert pack_linear_layers(model) > 0
        method = cls(LM(model, tokenizer), cfg, answer_format="Box it.", system=load_system("sequential"))
        with torch.inference_mode():
            texts.append([t.final_text for t in method.run(["What is 2 + 3?", "x"])])
    assert texts[0] == texts[1]
