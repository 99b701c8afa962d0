"""Decoding stability as the DiffMAS paper measures it: the mean per-token perplexity of each
generated answer under the model that generated it, in records, summaries and comparisons."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffmas.cli import main
from diffmas.decoding import AnswerCue, DecodePool, Sampling
from diffmas.engine import LM

QUESTIONS = ["What is 2 + 3?", "Tom has 17 apples and gives 5 away. How many are left?", "x"]


@pytest.fixture
def lm(tiny_qwen) -> LM:
    return LM(*tiny_qwen)


def decode_all(lm: LM, prompts, budget, sampling=None, cue=None):
    pool = DecodePool(lm, "A", sampling or Sampling(), cue)
    cache = lm.new_cache(len(prompts))
    pool.add(cache, lm.prefill(cache, "A", prompts), budget, list(range(len(prompts))))
    done = {}
    while len(pool):
        done.update({f.key: f for f in pool.step()})
    return [done[k] for k in range(len(prompts))]


def logprobs_after(lm: LM, prompt: list[int], ids: list[int]) -> list[float]:
    """log p(ids[i] | prompt + ids[:i]) from one plain forward pass over the whole sequence."""
    out = lm.model(input_ids=torch.tensor([prompt + ids]))
    logp = torch.log_softmax(out.logits[0, len(prompt) - 1 : -1].float(), dim=-1)
    return logp.gather(1, torch.tensor(ids)[:, None]).squeeze(1).tolist()


@torch.no_grad()
@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.8, top_p=0.9, seed=3, min_new_tokens=2)])
def test_perplexity_is_that_of_the_chosen_tokens_under_the_model(lm, sampling):
    prompts = [lm.chat_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    for prompt, f in zip(prompts, decode_all(lm, prompts, 8, sampling)):
        expected = math.exp(-sum(logprobs_after(lm, prompt, f.ids)) / len(f.ids))
        assert f.scored == len(f.ids) and f.perplexity == pytest.approx(expected, rel=1e-4)
        assert f.perplexity >= 1


@torch.no_grad()
def test_tokens_fed_by_the_answer_cue_are_not_scored(lm):
    prompts = [lm.chat_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    text = " so \\boxed{"
    cue_ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    cued = decode_all(lm, prompts, 6, cue=AnswerCue(text, cue_ids, lambda key, t: False, max_new_tokens=3))
    for prompt, f in zip(prompts, cued):
        assert f.cue_at is not None
        chosen = [i for i in range(len(f.ids)) if not f.cue_at <= i < f.cue_at + len(cue_ids)]
        assert f.scored == len(chosen)
        logp = logprobs_after(lm, prompt, f.ids)
        assert f.logprob == pytest.approx(sum(logp[i] for i in chosen), rel=1e-4)


def test_records_summaries_and_comparisons_carry_it(tiny_model_dir, tmp_path, capsys):
    runs = []
    for method in ("single", "latent_mas"):
        out = tmp_path / method
        args = ["eval", "--model", tiny_model_dir, "--dtype", "float32", "--task", "synthetic-arith"]
        args += ["--limit", "3", "--method", method, "--latent-steps", "1", "--max-new-tokens", "5", "--out", str(out)]
        assert main(args) == 0
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        assert all(r["perplexity"] >= 1 for r in records)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["mean_perplexity"] == pytest.approx(sum(r["perplexity"] for r in records) / 3)
        runs.append(str(out))
    assert "perplexity" in capsys.readouterr().out
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "perplexity" in table
    row = next(line for line in table.splitlines() if "| single" in line or "single |" in line)
    assert f"{summary['mean_perplexity']:.3f}" in table and row
