"""The latent channel's ablations (MethodConfig.ablate), on a tiny model: what the final agent
can still read of the upstream agents, checked in the shared trace itself."""

from __future__ import annotations

import json

import pytest
import torch

from diffmas.agents import load_system
from diffmas.cli import main
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.methods import LatentMAS, MethodConfig

pytestmark = pytest.mark.usefixtures("one_thread")
QUESTIONS = ["What is 2 + 3?", "Tom has 12 eggs and breaks 5. How many are left?", "Is 7 prime?"]


@pytest.fixture(scope="module")
def lm():
    from diffmas.models import build_tiny_model

    return LM(*build_tiny_model("qwen2", seed=0, dtype=torch.float32))


def context(lm, ablate, questions=QUESTIONS):
    method = LatentMAS(
        lm,
        MethodConfig(latent_steps=3, ablate=ablate),
        answer_format="\\boxed{}",
        system=load_system(None, "sequential"),
    )
    with torch.inference_mode():
        return method.build_context(questions), method


def upstream_columns(ctx, method, kinds):
    names = {a.name for a in method.system.upstream}
    cols = torch.zeros(len(ctx.cache), dtype=torch.bool)
    for seg in ctx.cache.segments:
        if seg.agent in names and seg.kind in kinds:
            cols[seg.start : seg.end] = True
    return cols


@pytest.mark.parametrize("ablate, hidden_kinds", [("mask-latents", {"latent"}), ("mask", {"latent", "prompt"})])
def test_masks_hide_exactly_the_upstream_segments_they_name(lm, ablate, hidden_kinds):
    plain, method = context(lm, None)
    masked, _ = context(lm, ablate)
    hidden = upstream_columns(plain, method, hidden_kinds)
    assert hidden.any()
    assert torch.equal(masked.cache.visible[:, hidden], torch.zeros_like(masked.cache.visible[:, hidden]))
    assert torch.equal(masked.cache.visible[:, ~hidden], plain.cache.visible[:, ~hidden])
    # The final agent reads the trace differently (its prompt's hidden state changes).
    assert not torch.allclose(masked.last_hidden, plain.last_hidden)


def test_shuffle_gives_each_problem_the_next_ones_latent_steps(lm):
    plain, method = context(lm, None)
    shuffled, _ = context(lm, "shuffle")
    latent = upstream_columns(plain, method, {"latent"})
    final = {a.name for a in method.system.agents} - {a.name for a in method.system.upstream}
    before_final = torch.tensor([s.agent not in final for s in plain.cache.segments])
    assert before_final.any()
    for a, b in zip(plain.cache.kv.layers, shuffled.cache.kv.layers):
        for name in ("keys", "values"):
            ours, theirs = getattr(a, name), getattr(b, name)
            assert torch.equal(theirs[:, :, latent], torch.roll(ours, -1, dims=0)[:, :, latent])
            upstream_prompts = upstream_columns(plain, method, {"prompt"})
            assert torch.equal(theirs[:, :, upstream_prompts], ours[:, :, upstream_prompts])
    assert torch.equal(shuffled.cache.visible, plain.cache.visible)


def test_shuffle_needs_two_problems_and_only_latent_methods_take_ablations(lm, tiny_model_dir, capsys):
    with pytest.raises(DiffMASError, match="at least 2 problems per batch"):
        context(lm, "shuffle", QUESTIONS[:1])
    with pytest.raises(DiffMASError, match="ablate must be one of"):
        MethodConfig(ablate="scramble")
    args = ["eval", "--model", tiny_model_dir, "--dtype", "float32", "--task", "synthetic-arith", "--limit", "2"]
    assert main([*args, "--method", "single", "--ablate", "mask"]) == 1
    assert "--ablate is for the latent methods" in capsys.readouterr().err


def test_eval_with_an_ablation_records_it(tiny_model_dir, tmp_path):
    out = tmp_path / "ev"
    args = ["eval", "--model", tiny_model_dir, "--dtype", "float32", "--task", "synthetic-arith", "--limit", "4",
            "--batch-size", "2", "--max-new-tokens", "4", "--latent-steps", "2", "--method", "latent_mas",
            "--ablate", "shuffle", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["config"]["ablate"] == "shuffle"
