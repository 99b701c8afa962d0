"""The step split of benchmarks/diagnostics/decode_overhead.py and the latent probe of
benchmarks/diagnostics/latent_probe.py, on tiny models: what they time and print must be what they say it is."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from diffmas.engine import LM
from diffmas.kernels import packed as packed_module
from diffmas.kernels.attention import use_cpu_attention
from diffmas.kernels.packed import fuse_sibling_layers, pack_linear_layers, packing_available
from diffmas.models import build_tiny_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks" / "diagnostics"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def packed_lm():
    if not packing_available():
        pytest.skip("oneDNN packed linear layers are not available in this build")
    # bfloat16 as the benchmark runs, where this CPU can pack it (AVX512-BW/VL or AVX-NE-CONVERT).
    dtype = torch.bfloat16 if packing_available(torch.bfloat16) else torch.float32
    lm = LM(*build_tiny_model("qwen2", seed=0, dtype=dtype), name="tiny")
    pack_linear_layers(lm.model)
    fuse_sibling_layers(lm.model)
    use_cpu_attention(lm.model)
    return lm


def test_one_step_products_are_exactly_one_steps(packed_lm):
    """Per layer one fused q/k/v product, o_proj, one fused gate/up product and down_proj; a
    decode step adds the output head, a latent step does not."""
    bench = _script("decode_overhead")
    layers = packed_lm.model.config.num_hidden_layers
    head = packed_lm.head.weight.shape[0]
    with torch.inference_mode():
        decode = bench.one_step_products(packed_lm, 12, "decode")
        latent = bench.one_step_products(packed_lm, 12, "latent")
    assert len(decode) == 4 * layers + 1 and len(latent) == 4 * layers
    # The decoder's products read one new position (B=1, T=1); the head reads the (1, d) last state.
    assert all(x.shape[:-1] == (1, 1) for x, _, _ in decode[:-1] + latent) and decode[-1][0].shape[:-1] == (1,)
    outs = [torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "").shape[-1] for x, w, b in decode]
    assert outs[-1] == head and head not in outs[:-1]


def test_step_split_times_three_parts_and_restores_the_products(packed_lm):
    bench = _script("decode_overhead")
    real = packed_module._product
    with torch.inference_mode():
        for kind in ("decode", "latent"):
            whole, products, rest = bench.step_split_ms(packed_lm, 12, 3, kind)
            assert whole > 0 and products > 0 and rest > 0
    assert packed_module._product is real  # the table of answers is gone: real products again
    with torch.inference_mode():
        a = packed_lm.logits(packed_lm.prefill(packed_lm.new_cache(1), "A", [[5, 6, 7]]))
        b = packed_lm.logits(packed_lm.prefill(packed_lm.new_cache(1), "A", [[5, 6, 8]]))
    assert not torch.equal(a, b)


def test_latent_probe_reads_out_every_latent_step(tiny_model_dir, capsys):
    probe = _script("latent_probe")
    assert probe.main(["--model", tiny_model_dir, "--steps", "0", "2", "--tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "  0 latent steps | readout: []" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("  2 latent steps"))
    assert line.count("'") + line.count('"') >= 4  # two readout tokens, each quoted
