"""Likelihoods of given continuations on top of a method's context (Method.score)."""

from __future__ import annotations

import pytest
import torch

from diffmas.agents import load_system
from diffmas.decoding import decode_rows
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.methods import LatentMAS, MethodConfig, SingleAgent, TextMAS
from diffmas.prompts import single_messages

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["What is 2 + 3?", "Tom has 17 apples and gives 5 away. How many are left?", "x"]


@pytest.fixture
def lm(tiny_qwen) -> LM:
    return LM(*tiny_qwen)


def methods(lm: LM):
    cfg = MethodConfig(latent_steps=2, max_new_tokens=8, agent_max_new_tokens=4)
    yield SingleAgent(lm, cfg, answer_format="Answer.")
    yield LatentMAS(lm, cfg, answer_format="Answer.", system=load_system("hierarchical"))
    yield TextMAS(lm, cfg, answer_format="Answer.", system=load_system("hierarchical"))


@torch.inference_mode()
def test_greedy_answers_score_as_greedy_with_their_decoding_logprob(lm):
    """Two code paths, one number: the log-probability the decoder summed while writing a greedy
    answer is what scoring that answer gives, and every token of it is the greedy choice."""
    for method in methods(lm):
        p = method.prepare(QUESTIONS)
        rows = decode_rows(lm, p.cache, p.agent, p.last_hidden, p.max_new_tokens, p.sampling)
        scores = method.score(QUESTIONS, [r.ids for r in rows])
        for row, (logp, greedy) in zip(rows, scores):
            assert row.scored == len(row.ids) > 0
            assert greedy, method.name
            assert logp == pytest.approx(row.logprob, abs=1e-3), method.name


@torch.inference_mode()
def test_single_agent_score_is_the_plain_model_likelihood(lm):
    method = SingleAgent(lm, MethodConfig(), answer_format="Answer.")
    cont = " The answer is 5."
    ((logp, _),) = method.score([QUESTIONS[0]], [cont])
    prompt = lm.chat_ids(single_messages(QUESTIONS[0], "Answer."))
    target = lm.tokenizer(cont, add_special_tokens=False)["input_ids"]
    logits = lm.model(torch.tensor([prompt + target])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    expected = logprobs.gather(1, torch.tensor(target)[:, None]).sum().item()
    assert logp == pytest.approx(expected, abs=1e-4)


@torch.inference_mode()
def test_options_of_one_question_share_its_context_and_match_one_by_one(lm):
    method = LatentMAS(lm, MethodConfig(latent_steps=2), answer_format="Answer.", system=load_system(None, None))
    questions = [QUESTIONS[0]] * 3 + [QUESTIONS[1]] * 2
    options = [" A", " B is longer", " C", " yes", ""]
    built = []
    original = method.build_context
    method.build_context = lambda qs, *a, **k: built.append(len(qs)) or original(qs, *a, **k)
    together = method.score(questions, options)
    assert built == [2]  # one context per distinct question
    assert together[-1] == (0.0, True)  # an empty continuation
    alone = [method.score([q], [o])[0] for q, o in zip(questions[:-1], options[:-1])]
    for (a, ga), (b, gb) in zip(together[:-1], alone):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    with pytest.raises(DiffMASError, match="continuations for"):
        method.score(questions, options[:2])
