"""Linear layers on oneDNN-prepacked weights: same results as nn.Linear, with and without gradients."""

from __future__ import annotations

import inspect
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffmas.agents import load_system
from diffmas.engine import LM
from diffmas.kernels.packed import PackedLinear, fuse_sibling_layers, pack_linear_layers, packing_available
from diffmas.methods import LatentMAS, MethodConfig, SingleAgent
from diffmas.models import build_tiny_model

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch has no oneDNN packed linear")
# oneDNN packs bfloat16 only on CPUs with AVX512-BW/VL or AVX-NE-CONVERT; elsewhere those layers keep F.linear.
PACKED_DTYPES = [
    torch.float32,
    pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(not packing_available(torch.bfloat16), reason="this CPU cannot pack bfloat16"),
    ),
]


@pytest.mark.parametrize("dtype", PACKED_DTYPES)
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


def test_trainable_weights_take_the_ordinary_path_and_edits_are_followed():
    layer = nn.Linear(16, 8)
    pack_linear_layers(nn.Sequential(layer))
    x = torch.randn(3, 16, requires_grad=True)
    y = layer(x)  # gradients on and a trainable weight: F.linear, no packed copy made
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None and layer._packed is None
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2)  # e.g. LoRA weights merged into the base weight
        after = layer(x)
    torch.testing.assert_close(after - layer.bias, 2 * (before - layer.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", PACKED_DTYPES)
@pytest.mark.parametrize("trainable_bias", [False, True])
def test_frozen_weights_train_on_packed_products(dtype, trainable_bias):
    """The base model under LoRA: packed forward, the input's gradient from the packed transpose."""
    layer = nn.Linear(64, 96, dtype=dtype)
    plain = nn.Linear(64, 96, dtype=dtype)
    plain.load_state_dict(layer.state_dict())
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(trainable_bias)
    pack_linear_layers(nn.Sequential(layer))
    x = torch.randn(2, 3, 64, dtype=dtype, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_()
    grad = torch.randn(2, 3, 96, dtype=dtype)
    layer(x).backward(grad)
    plain(x_plain).backward(grad)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_plain.grad, **tol)
    assert layer.weight.grad is None
    if trainable_bias:  # something of the layer trains: the ordinary path, the bias gets its gradient
        assert layer._packed is None and layer.bias.grad is not None
    else:
        assert layer._packed is not None and layer._packed_t is not None


def test_lora_training_unchanged_by_packing_and_fusing():
    """Loss and every LoRA gradient of a tiny Qwen2 are those of the unpacked model."""
    from peft import LoraConfig, get_peft_model

    results = []
    for packed in (False, True):
        model, _ = build_tiny_model("qwen2", seed=0, dtype=torch.float32)
        if packed:
            pack_linear_layers(model)
            fuse_sibling_layers(model)
        config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], init_lora_weights=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = get_peft_model(model, config)  # the same random, non-zero adapters both times
        ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
        if packed:
            groups = {m._siblings for m in model.modules() if isinstance(m, PackedLinear) and m._siblings}
            # The fused products' backward ran, except the first layer's q/k/v: their input (the
            # embeddings) needs no gradient.
            assert len([g for g in groups if g._packed_t is not None]) == len(groups) - 1
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-6)
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6)


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


def _logits_and_steps(model, ids):
    """Logits of a prefill and of three greedy decode steps (through the KV cache)."""
    # The cache argument and output as this transformers names them (past_key_values before 5.x).
    # A PEFT wrapper's forward takes **kwargs: ask the model it wraps.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    out = model(input_ids=ids, use_cache=True)
    logits, cache = [out.logits], out[arg]
    for _ in range(3):
        nxt = logits[-1][:, -1:].argmax(-1)
        out = model(input_ids=nxt, use_cache=True, **{arg: cache})
        logits.append(out.logits)
    return logits


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_siblings_give_bit_identical_outputs(arch, dtype):
    model, _ = build_tiny_model(arch, seed=0, dtype=dtype)
    pack_linear_layers(model)
    layers = model.config.num_hidden_layers
    assert fuse_sibling_layers(model) == 2 * layers  # q/k/v and gate/up of every layer
    groups = {id(m._siblings) for m in model.modules() if isinstance(m, PackedLinear) and m._siblings}
    assert len(groups) == 2 * layers
    ids = torch.randint(0, model.config.vocab_size, (3, 7))
    with torch.inference_mode():
        fused = _logits_and_steps(model, ids)
        assert fuse_sibling_layers(model, on=False) == 2 * layers
        plain = _logits_and_steps(model, ids)
    for a, b in zip(fused, plain):
        assert torch.equal(a, b)


def test_fused_siblings_under_lora_adapters():
    """LoRA (PEFT) wraps some projections: their base layers stay grouped, results stay exact."""
    from peft import LoraConfig, get_peft_model

    model, _ = build_tiny_model("qwen2", seed=0, dtype=torch.float32)
    pack_linear_layers(model)
    fuse_sibling_layers(model)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    model = get_peft_model(model, config)  # random, non-zero adapters
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    with torch.inference_mode():
        fused = _logits_and_steps(model, ids)
        groups = {m._siblings for m in model.modules() if isinstance(m, PackedLinear) and m._siblings}
        assert groups and all(g._packed is not None for g in groups)  # every fused product ran
        layers = model.config.num_hidden_layers
        assert fuse_sibling_layers(model, on=False) == 2 * layers  # found through the PEFT wrappers
        plain = _logits_and_steps(model, ids)
    for a, b in zip(fused, plain):
        assert torch.equal(a, b)


def _group(in_features=32, sizes=(48, 16, 16), bias=True):
    parent = nn.Module()
    for name, size in zip(("q_proj", "k_proj", "v_proj"), sizes):
        setattr(parent, name, nn.Linear(in_features, size, bias=bias))
    pack_linear_layers(parent)
    assert fuse_sibling_layers(parent) == 1
    return parent


def test_fused_siblings_never_hand_out_a_stale_or_foreign_slice():
    parent = _group()
    q, k, v = parent.q_proj, parent.k_proj, parent.v_proj
    x1, x2 = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        got = [k(x1), q(x2), v(x2), q(x2), v(x1)]  # any order, mixed inputs, a member twice
        want = [F.linear(x, m.weight, m.bias) for m, x in zip((k, q, v, q, v), (x1, x2, x2, x2, x1))]
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        v.weight.mul_(2)  # an in-place edit (a merged LoRA): the fused weight follows
        q(x1)
        torch.testing.assert_close(v(x1), F.linear(x1, v.weight, v.bias), rtol=1e-5, atol=1e-5)


def test_fused_siblings_stay_off_the_training_path_and_free_their_input():
    parent = _group(bias=False)
    q, k, v = parent.q_proj, parent.k_proj, parent.v_proj
    x = torch.randn(4, 32, requires_grad=True)
    sum(m(x).sum() for m in (q, k, v)).backward()  # trainable weights: plain F.linear, no fused product
    assert q._siblings._packed is None and q.weight.grad is not None and x.grad is not None
    with torch.inference_mode():
        y = torch.randn(4, 32)
        for m in (q, k, v):
            m(y)
    assert q._siblings._packed is not None  # the fused product ran ...
    assert q._siblings._pending.input is None and not q._siblings._pending.waiting  # ... nothing is kept alive


def test_fused_siblings_keep_threads_apart():
    parent = _group()
    q, k = parent.q_proj, parent.k_proj
    group = q._siblings
    x_main, x_other = torch.randn(2, 32), torch.randn(2, 32)
    result = {}

    def other_thread():
        with torch.no_grad():  # grad mode is per thread
            result["saw"] = getattr(group._pending, "waiting", None)
            result["k"] = k(x_other)

    with torch.no_grad():
        q(x_main)  # k's and v's slices of x_main's product now wait, in this thread only
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert result["saw"] is None  # the other thread never sees them ...
        assert id(k) in group._pending.waiting  # ... nor replaces them with its own
        torch.testing.assert_close(result["k"], F.linear(x_other, k.weight, k.bias), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k(x_main), F.linear(x_main, k.weight, k.bias), rtol=1e-5, atol=1e-5)


def test_unlike_modules_are_not_fused():
    parent = _group(sizes=(48, 16, 16))
    parent.v_proj = nn.Linear(24, 16)  # another input size: not siblings
    pack_linear_layers(parent)
    assert fuse_sibling_layers(parent) == 0
    assert parent.q_proj._siblings is None and parent.k_proj._siblings is None  # the old group is gone
