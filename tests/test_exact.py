"""Batch-invariant inference (diffmas.kernels.exact): a row's bits do not depend on its batch."""

from __future__ import annotations

import pytest
import torch

from diffmas.agents import load_system
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.kernels.attention import diffmas_cpu_attention, use_cpu_attention
from diffmas.kernels.exact import invariant_attention, make_batch_invariant
from diffmas.kernels.packed import PackedLinear, fuse_sibling_layers, pack_linear_layers, packing_available
from diffmas.kernels.rows import MIN_ROWS, at_least_rows
from diffmas.methods import LatentMAS, MethodConfig, SingleAgent, TextMAS
from diffmas.models import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = [
    "What is 2 + 3?",
    "Tom has 17 apples. He gives 5 to Ann and buys 12 more. How many apples does he have now?",
    "x",
    "A train travels 60 km per hour for 3 hours. How far does it go? " * 3,
]


def test_at_least_rows_pads_small_products_and_drops_the_padding():
    seen = []

    def fn(rows):
        seen.append(rows.shape)
        return rows * 2

    x = torch.arange(6.0).reshape(1, 2, 3)  # two rows of three
    assert torch.equal(at_least_rows(fn, x, 4), x * 2)
    assert seen == [(4, 3)]
    big = torch.ones(5, 3)
    at_least_rows(fn, big, 4)
    assert seen[-1] == (5, 3)  # enough rows: untouched


@pytest.mark.skipif(not packing_available(), reason="needs oneDNN's packed linear")
@torch.no_grad()
def test_padded_products_give_each_row_the_bits_of_a_full_batch():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4864, 896, bias=False).to(torch.bfloat16)  # the MLP down projection of Qwen2.5-0.5B
    pack_linear_layers(layer)
    layer._min_rows = MIN_ROWS
    x = torch.randn(16, 4864).to(torch.bfloat16)
    batch = layer(x)
    for i in range(16):
        assert torch.equal(layer(x[i : i + 1]), batch[i : i + 1])
        assert torch.equal(layer(x[i]), batch[i])  # a 1-D input too


def _left_padded(lengths: list[int], q_len: int, heads=(4, 2), d=16, dtype=torch.bfloat16, seed=0):
    """Random query/key/value for rows of different real lengths, left-padded into one batch, with
    the boolean (B, 1, T, L) mask transformers builds (causal, pads masked)."""
    g = torch.Generator().manual_seed(seed)
    b, width = len(lengths), max(lengths)
    hq, hk = heads
    q = torch.randn(b, hq, q_len, d, generator=g).to(dtype)
    k = torch.randn(b, hk, width, d, generator=g).to(dtype)
    v = torch.randn(b, hk, width, d, generator=g).to(dtype)
    real = torch.zeros(b, width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        real[i, width - n :] = True
    causal = torch.ones(q_len, width, dtype=torch.bool).tril(width - q_len)
    mask = (causal[None] & real[:, None, :])[:, None]  # (B, 1, T, L)
    return q, k, v, mask


@pytest.mark.parametrize("q_len", [1, 3, 24])  # decode, latent-size and prefill-size queries
@torch.no_grad()
def test_invariant_attention_gives_each_row_what_it_gets_alone(q_len):
    attention = invariant_attention(diffmas_cpu_attention)
    lengths = [700, 45, 129, 24, 333, 517, 8, 260]
    q, k, v, mask = _left_padded(lengths, q_len, heads=(14, 2), d=64)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 7, True  # what SDPA's function reads (long queries)
    out, _ = attention(module, q, k, v, mask, scaling=0.25)
    width = max(lengths)
    for i, n in enumerate(lengths):
        alone_q, alone_k, alone_v, alone_mask = (t[i : i + 1] for t in (q, k, v, mask))
        real_q = slice(q_len - min(q_len, n), q_len)
        alone, _ = attention(
            module,
            alone_q[:, :, real_q],
            alone_k[:, :, width - n :],
            alone_v[:, :, width - n :],
            alone_mask[:, :, real_q, width - n :],
            scaling=0.25,
        )
        assert torch.equal(out[i, real_q], alone[0])
    # Queries that are pads get zeros, never NaN.
    assert torch.isfinite(out).all()


def test_calls_with_gradients_stay_batched_and_only_long_queries_reach_the_inner_function():
    calls = []

    def inner(module, q, *args, **kwargs):
        calls.append((q.shape[0], q.shape[2]))  # (rows, queries)
        return q.transpose(1, 2), None

    attention = invariant_attention(inner)
    q, k, v, mask = _left_padded([30, 20], 24, dtype=torch.float32)
    with torch.enable_grad():
        attention(torch.nn.Module(), q.requires_grad_(), k, v, mask)
    assert calls == [(2, 24)]  # training: the batched call, unchanged
    with torch.no_grad():
        attention(torch.nn.Module(), q, k, v, mask)
        assert calls[1:] == [(1, 24), (1, 20)]  # prefill-sized: each row alone, on its real queries
        q, k, v, mask = _left_padded([5, 3], 1, dtype=torch.float32)
        attention(torch.nn.Module(), q, k, v, mask)
    assert len(calls) == 3  # one-token queries: the chunked path, no inner call


def test_chunked_attention_computes_attention():
    """Against PyTorch's own attention in float32, with pads and a hidden segment (a hole)."""
    attention = invariant_attention(diffmas_cpu_attention)
    q, k, v, mask = _left_padded([700, 45, 129, 24], 1, heads=(14, 2), d=64, dtype=torch.float32)
    mask[..., 650:660] = False
    with torch.no_grad():
        out, _ = attention(torch.nn.Module(), q, k, v, mask, scaling=0.125)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(7, 1), v.repeat_interleave(7, 1), attn_mask=mask, scale=0.125
        )
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)


def _exact_lm(arch: str, exact: bool) -> LM:
    model, tokenizer = build_tiny_model(arch, dtype=torch.bfloat16)
    pack_linear_layers(model)
    fuse_sibling_layers(model)
    use_cpu_attention(model)
    if exact:
        make_batch_invariant(model)
    return LM(model, tokenizer)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("cls", [SingleAgent, TextMAS, LatentMAS])
@torch.no_grad()
def test_bfloat16_rows_are_bit_identical_at_batch_1_and_16(arch, cls):
    lm = _exact_lm(arch, exact=True)
    method = cls(
        lm,
        MethodConfig(latent_steps=3, max_new_tokens=12, agent_max_new_tokens=6),
        answer_format="Box it.",
        system=load_system("sequential"),
    )
    questions = (QUESTIONS * 4)[:16]
    batched = method.prepare(questions).last_hidden
    answers = method.run(questions)
    for i, q in enumerate(questions[:4]):
        assert torch.equal(method.prepare([q]).last_hidden[0], batched[i])
        alone = method.run([q])[0]
        assert (alone.final_text, alone.generated_tokens) == (answers[i].final_text, answers[i].generated_tokens)
    streamed = dict(method.run_stream(questions[:7], batch_size=3, refill=0.5))  # batches that merge
    assert [streamed[i].final_text for i in range(7)] == [a.final_text for a in answers[:7]]


def test_every_linear_layer_pads_small_products():
    lm = _exact_lm("qwen2", exact=True)
    linears = [m for m in lm.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, PackedLinear) and m._min_rows == MIN_ROWS for m in linears)
    assert lm.model.config._attn_implementation == "diffmas_cpu_exact"


def test_batch_invariance_needs_sdpa_attention_and_a_cpu():
    model, _ = build_tiny_model("qwen2")
    model.set_attn_implementation("eager")
    with pytest.raises(DiffMASError, match="SDPA"):
        make_batch_invariant(model)
    from diffmas.models import load_model

    with pytest.raises(DiffMASError, match="CPU only"):
        load_model("unused", device="cuda", batch_invariant=True)


@torch.no_grad()
def test_trained_adapters_keep_rows_bit_identical():
    """DiffMAS's set-up: per-agent LoRA attached after loading, and the communication map."""
    from diffmas.latent import CommAdapter
    from diffmas.train import AgentAdapters, LoraSettings

    lm = _exact_lm("qwen2", exact=True)
    system = load_system("sequential")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapters = AgentAdapters(lm, [a.name for a in system.agents], LoraSettings(dropout=0.0))
    gen = torch.Generator().manual_seed(1)
    for p in adapters.parameters():  # fresh LoRA is the identity: make every adapter matter
        p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.05)
    lora = [m for name, m in lm.model.named_modules() if "lora_A" in name and isinstance(m, torch.nn.Linear)]
    assert lora and all(isinstance(m, PackedLinear) and m._min_rows == MIN_ROWS for m in lora)
    method = LatentMAS(lm, MethodConfig(latent_steps=3, max_new_tokens=8), answer_format="Box it.", system=system)
    method.comm = CommAdapter.from_lm(lm)
    questions = (QUESTIONS * 4)[:16]
    batched = method.prepare(questions).last_hidden
    for i, q in enumerate(questions[:4]):
        assert torch.equal(method.prepare([q]).last_hidden[0], batched[i])


def test_the_option_reaches_the_loaded_model(tiny_model_dir):
    import argparse

    from diffmas.config import add_arguments, from_args
    from diffmas.engine import ModelConfig
    from diffmas.evaluate import EvalConfig
    from diffmas.kernels.exact import is_batch_invariant

    assert is_batch_invariant(ModelConfig(model=tiny_model_dir, batch_invariant=True).load_lm().model)
    assert not is_batch_invariant(ModelConfig(model=tiny_model_dir).load_lm().model)
    parser = argparse.ArgumentParser()
    add_arguments(parser, EvalConfig)
    assert from_args(EvalConfig, parser.parse_args(["--batch-invariant"])).batch_invariant
