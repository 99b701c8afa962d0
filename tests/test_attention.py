"""The matrix-product attention of short queries computes what transformers' SDPA computes."""

from __future__ import annotations

import pytest
import torch

from diffmas.agents import load_system
from diffmas.engine import LM
from diffmas.kernels.attention import NAME, _matmul_attention, use_cpu_attention
from diffmas.methods import LatentMAS, MethodConfig, SingleAgent
from diffmas.models import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(arch: str):
    """Two identical tiny float32 models, the second on the matrix-product attention."""
    ref = build_tiny_model(arch, seed=0, dtype=torch.float32)
    new = build_tiny_model(arch, seed=0, dtype=torch.float32)
    assert use_cpu_attention(new[0]) and new[0].config._attn_implementation == NAME
    return ref, new


@pytest.mark.parametrize("t", [1, 3, 9])
def test_matmul_attention_matches_sdpa_with_gqa_and_a_fully_masked_row(t):
    torch.manual_seed(0)
    b, hq, hk, length, d = 3, 4, 2, 12, 8
    q = torch.randn(b, hq, t, d, requires_grad=True)
    k = torch.randn(b, hk, length, d, requires_grad=True)
    v = torch.randn(b, hk, length, d, requires_grad=True)
    mask = torch.rand(b, 1, t, length) > 0.3
    mask[..., -1] = True
    mask[1, :, 0, :] = False  # a query with nothing to see (a left pad): finite, unlike -inf
    got = _matmul_attention(q, k, v, mask, d**-0.5)  # (B, T, Hq, D)
    assert torch.isfinite(got).all()
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(hq // hk, dim=1), v.repeat_interleave(hq // hk, dim=1), attn_mask=mask
    ).transpose(1, 2)
    keep = mask.any(dim=-1)[:, 0]  # (B, T): rows whose output is defined
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(got[keep].sum(), (q, k, v))
    q.grad = k.grad = v.grad = None
    ref_grads = torch.autograd.grad(ref[keep].sum(), (q, k, v))
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("cls", [SingleAgent, LatentMAS])
def test_greedy_answers_unchanged(arch, cls):
    cfg = MethodConfig(latent_steps=3, max_new_tokens=10)
    questions = ["What is 2 + 3?", "x", "A train travels 60 miles per hour for 3 hours. How far?"]
    texts = []
    for model, tokenizer in _pair(arch):
        method = cls(LM(model, tokenizer), cfg, answer_format="Box it.", system=load_system("sequential"))
        with torch.inference_mode():
            texts.append([t.final_text for t in method.run(questions)])
    assert texts[0] == texts[1]


def test_training_loss_and_gradients_unchanged():
    """With gradients the fused kernel runs (it was faster for training); the result is the same."""
    from diffmas.train.objective import trajectory_loss

    results = []
    for model, tokenizer in _pair("qwen2"):
        method = LatentMAS(
            LM(model, tokenizer),
            MethodConfig(latent_steps=2),
            answer_format="Box it.",
            system=load_system("sequential"),
        )
        model.requires_grad_(False)
        model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)  # upstream of every step
        out = trajectory_loss(method, ["What is 2 + 3?", "x"], ["5 \\boxed{5}", "\\boxed{1}"])
        out.loss.backward()
        results.append((out.loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_other_implementations_are_left_alone():
    model, _ = build_tiny_model("qwen2", seed=0, dtype=torch.float32)
    model.set_attn_implementation("eager")
    assert not use_cpu_attention(model)
    assert model.config._attn_implementation == "eager"


def test_sliding_window_layers_unchanged(tiny_qwen):
    """Gemma 3 style windowed layers: their masks come from transformers' own mask functions."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_qwen
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.layer_types = ["sliding_attention"] + ["full_attention"] * (config.num_hidden_layers - 1)
    config.use_sliding_window, config.sliding_window = True, 8  # far shorter than the prompts
    texts = []
    for matmul in (False, True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            windowed = AutoModelForCausalLM.from_config(config).eval()
        if matmul:
            assert use_cpu_attention(windowed)
        method = LatentMAS(
            LM(windowed, tokenizer),
            MethodConfig(latent_steps=3, max_new_tokens=8),
            answer_format="Box it.",
            system=load_system("sequential"),
        )
        with torch.inference_mode():
            texts.append([t.final_text for t in method.run(["What is 2 + 3?", "x"])])
    assert texts[0] == texts[1]


def test_routing_short_queries_without_gradients_only(monkeypatch):
    import diffmas.kernels.attention as attention

    calls = []
    real = attention._matmul_attention
    monkeypatch.setattr(attention, "_matmul_attention", lambda *a: calls.append(a[0].shape[2]) or real(*a))
    model, tokenizer = build_tiny_model("qwen2", seed=0, dtype=torch.float32)
    assert use_cpu_attention(model)
    lm = LM(model, tokenizer)
    long_prompt = tokenizer("What is 2 + 3? " * 4)["input_ids"]
    assert len(long_prompt) > attention.SHORT_QUERY
    with torch.no_grad():
        cache = lm.new_cache(1)
        lm.prefill(cache, "A", [long_prompt])  # a long query: the fused kernel
        assert calls == []
        lm.prefill(cache, "A", [long_prompt[:1]])  # one token: the matmul path, every layer
        assert calls == [1] * model.config.num_hidden_layers
    calls.clear()
    cache = lm.new_cache(1)
    lm.prefill(cache, "A", [long_prompt[:1]])  # gradients on: the fused kernel (faster for training)
    assert calls == []
