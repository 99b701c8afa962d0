"""The shared KV trace, batched prefill/decode and latent steps on tiny random models."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffmas.agents import AgentSpec, SystemSpec, load_system
from diffmas.decoding import AnswerCue, DecodePool, Sampling, decode, looping
from diffmas.engine import LM
from diffmas.errors import ContextLengthError, DiffMASError
from diffmas.latent import Realigner, SoftEmbedding, run_latent_steps
from diffmas.methods import LatentMAS, MethodConfig, SingleAgent, TextMAS
from diffmas.prompts import agent_messages

QUESTIONS = [
    "What is 2 + 3?",
    "Tom has 17 apples. He gives 5 to Ann and buys 12 more. How many apples does he have now?",
    "x",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
]


@pytest.fixture(params=["tiny_qwen", "tiny_llama"])
def lm(request) -> LM:
    model, tokenizer = request.getfixturevalue(request.param)
    return LM(model, tokenizer)


def ids(lm: LM, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def test_cache_lengths_and_segments_advance(lm):
    prompts = [ids(lm, "short"), ids(lm, "a somewhat longer prompt here")]
    cache = lm.new_cache(2)
    h = lm.prefill(cache, "A", prompts)
    width = max(map(len, prompts))
    assert len(cache) == width == cache.kv.get_seq_length()
    assert cache.real_lengths().tolist() == [len(p) for p in prompts]
    h, _ = run_latent_steps(lm, cache, "A", h, 3, Realigner(lm))
    assert len(cache) == width + 3
    lm.prefill(cache, "B", prompts)
    assert [(s.agent, s.kind, len(s)) for s in cache.segments] == [
        ("A", "prompt", width),
        ("A", "latent", 3),
        ("B", "prompt", width),
    ]
    assert cache.real_lengths().tolist() == [2 * len(p) + 3 for p in prompts]
    cache.truncate(width + 1)
    assert len(cache) == cache.kv.get_seq_length() == width + 1
    assert [(s.kind, len(s)) for s in cache.segments] == [("prompt", width), ("latent", 1)]


@torch.no_grad()
def test_positions_count_real_tokens_only(lm):
    cache = lm.new_cache(2)
    lm.prefill(cache, "A", [ids(lm, "ab"), ids(lm, "a much longer prompt")])
    new_real = torch.tensor([[0, 1, 1], [1, 1, 1]])
    pos = cache.position_ids(new_real)
    n0, n1 = cache.real_lengths().tolist()
    assert pos[0, 1:].tolist() == [n0, n0 + 1]
    assert pos[1].tolist() == [n1, n1 + 1, n1 + 2]


@torch.no_grad()
def test_padded_rows_match_unpadded_rows(lm):
    """The hidden state fed back is always that of a real token, with real-token positions."""
    prompts = [ids(lm, q) for q in QUESTIONS]
    cache = lm.new_cache(len(prompts))
    batched = lm.prefill(cache, "A", prompts)
    batched, _ = run_latent_steps(lm, cache, "A", batched, 2, Realigner(lm))
    batched = lm.prefill(cache, "B", prompts[::-1])
    for b, p in enumerate(prompts):
        alone = lm.new_cache(1)
        h = lm.prefill(alone, "A", [p])
        h, _ = run_latent_steps(lm, alone, "A", h, 2, Realigner(lm))
        h = lm.prefill(alone, "B", [prompts[::-1][b]])
        torch.testing.assert_close(batched[b], h[0], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_trace_equals_one_plain_forward(lm):
    """With 0 latent steps the final agent reads exactly the concatenated upstream prompts."""
    a, b = ids(lm, "first agent prompt"), ids(lm, "final agent prompt")
    cache = lm.new_cache(1)
    lm.prefill(cache, "A", [a])
    h = lm.prefill(cache, "B", [b])
    full = lm.model(input_ids=torch.tensor([a + b])).logits[0, -1]
    torch.testing.assert_close(lm.logits(h)[0], full.float(), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_latent_step_feeds_realigned_hidden_state(lm):
    cache = lm.new_cache(1)
    prompt = ids(lm, "think about this")
    h = lm.prefill(cache, "A", [prompt])
    realigner = Realigner(lm)
    h2, _ = run_latent_steps(lm, cache, "A", h, 1, realigner)
    embeds = torch.cat([lm.model.get_input_embeddings()(torch.tensor([prompt])), realigner(h)], dim=1)
    expected = lm.decoder(inputs_embeds=embeds).last_hidden_state[0, -1]
    torch.testing.assert_close(h2[0], expected, atol=1e-4, rtol=1e-4)


def test_realigner_solves_ridge_problem_and_rescales(lm):
    r = Realigner(lm, realign=True)
    w_in = lm.model.get_input_embeddings().weight.detach().float()
    w_out = lm.head.weight.detach().float()
    lhs = (w_out.T @ w_out + 1e-5 * torch.eye(w_out.shape[1])) @ r.matrix
    torch.testing.assert_close(lhs, w_out.T @ w_in, atol=1e-3, rtol=1e-3)
    h = torch.randn(3, w_out.shape[1]) * 50
    for realign in (True, False):
        out = Realigner(lm, realign=realign)(h)
        assert out.shape == (3, 1, w_out.shape[1])
        norms = out.float().norm(dim=-1).flatten()
        torch.testing.assert_close(norms, torch.full_like(norms, w_in.norm(dim=1).mean().item()), rtol=1e-3, atol=1e-3)


@torch.no_grad()
def test_soft_latent_input_is_the_expected_embedding_of_the_next_token(lm):
    w_in = lm.model.get_input_embeddings().weight.detach().float()
    h = torch.randn(3, w_in.shape[1]) * 5
    probs = torch.softmax(lm.logits(h), dim=-1)
    out = SoftEmbedding(lm, 1.0)(h)
    assert out.shape == (3, 1, w_in.shape[1])
    torch.testing.assert_close(out[:, 0].float(), probs @ w_in, atol=1e-5, rtol=1e-4)
    # a cold distribution gives the greedy token's own embedding
    cold = SoftEmbedding(lm, 1e-4)(h)[:, 0].float()
    torch.testing.assert_close(cold, w_in[lm.logits(h).argmax(-1)], atol=1e-4, rtol=1e-4)
    # each row alone is what it is in the batch
    torch.testing.assert_close(SoftEmbedding(lm, 1.0)(h[1:2]), out[1:2], atol=0, rtol=0)
    with pytest.raises(DiffMASError, match="positive"):
        SoftEmbedding(lm, 0.0)


@torch.no_grad()
def test_latent_input_setting_picks_the_map(lm):
    method = LatentMAS(
        lm, MethodConfig(latent_steps=2, latent_input="soft", soft_temperature=0.5), system=load_system("sequential")
    )
    assert isinstance(method.latent_map, SoftEmbedding) and method.latent_map.temperature == 0.5
    assert isinstance(LatentMAS(lm, MethodConfig(), system=load_system("sequential")).latent_map, Realigner)
    traces = method.run(QUESTIONS[:2])
    assert [t.latent_steps for t in traces] == [2 * len(method.system.upstream)] * 2
    with pytest.raises(DiffMASError, match="latent_input"):
        _ = LatentMAS(lm, MethodConfig(latent_input="words"), system=load_system("sequential")).latent_map


@torch.no_grad()
def test_latent_steps_never_compute_logits(lm):
    calls = []
    handle = lm.head.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    try:
        method = LatentMAS(
            lm,
            MethodConfig(latent_steps=5, max_new_tokens=4),
            answer_format="Box it.",
            system=load_system("sequential"),
        )
        traces = method.run(QUESTIONS[:2])
    finally:
        handle.remove()
    # One head call per decoded token position, each on (B, d) last-position states only.
    assert len(calls) == max(t.generated_tokens for t in traces)
    assert all(len(shape) == 2 for shape in calls)


@pytest.mark.parametrize("method_name", ["single", "text_mas", "latent_mas"])
@pytest.mark.parametrize("topology", ["sequential", "hierarchical"])
@torch.no_grad()
def test_batch_size_never_changes_greedy_answers(lm, method_name, topology):
    if method_name == "single" and topology == "hierarchical":
        pytest.skip("single has no topology")
    cls = {"single": SingleAgent, "text_mas": TextMAS, "latent_mas": LatentMAS}[method_name]
    cfg = MethodConfig(latent_steps=3, max_new_tokens=12, agent_max_new_tokens=6)
    method = cls(lm, cfg, answer_format="Box it.", system=load_system(topology))
    questions = (QUESTIONS * 4)[:16]
    batched = method.run(questions)
    for q, t in zip(questions[:4], batched[:4]):
        alone = method.run([q])[0]
        assert alone.final_text == t.final_text
        assert alone.generated_tokens == t.generated_tokens


# The tiny llama writes one token over and over, so its rows cannot be made to stop at different steps.
@pytest.mark.parametrize("lm", ["tiny_qwen"], indirect=True)
@pytest.mark.parametrize("method_name", ["single", "text_mas", "latent_mas"])
@torch.no_grad()
def test_continuous_batching_never_changes_greedy_answers(lm, method_name):
    """Batches that join answers still being written (traces of other lengths, left-padded into one
    cache) give every problem the answer it gets alone, and each problem exactly once."""
    cls = {"single": SingleAgent, "text_mas": TextMAS, "latent_mas": LatentMAS}[method_name]
    method = cls(
        lm,
        MethodConfig(latent_steps=2, max_new_tokens=10, agent_max_new_tokens=4),
        answer_format="Box it.",
        system=load_system("sequential"),
    )
    questions = QUESTIONS + [q + " Explain." for q in QUESTIONS] + ["y"]
    stop = lm.stop_ids
    try:
        # Stop tokens taken from the answers themselves, so rows finish at different steps.
        lm.stop_ids = torch.tensor([], dtype=torch.long)
        p = method.prepare(questions[:3])
        outs = decode(lm, p.cache, p.agent, p.last_hidden, p.max_new_tokens, p.sampling)
        for first in range(1, 7):  # the first choice of stop tokens that makes rows finish at different steps
            lm.stop_ids = torch.tensor(sorted({o[min(first + 3 * i, len(o) - 1)] for i, o in enumerate(outs)}))
            alone = [method.run([q])[0] for q in questions]
            if len({t.agents[-1].generated_tokens for t in alone}) > 1:
                break
        assert len({t.agents[-1].generated_tokens for t in alone}) > 1  # they do finish at different steps
        for refill, by_length in ((0.0, False), (0.5, False), (1.0, False), (0.5, True)):
            got = dict(method.run_stream(questions, batch_size=3, refill=refill, by_length=by_length))
            assert sorted(got) == list(range(len(questions)))
            assert [got[i].final_text for i in range(len(questions))] == [t.final_text for t in alone]
            assert [got[i].generated_tokens for i in range(len(questions))] == [t.generated_tokens for t in alone]
    finally:
        lm.stop_ids = stop
    with pytest.raises(DiffMASError, match="refill"):
        list(method.run_stream(questions, refill=2))


@torch.no_grad()
def test_batching_by_length_groups_questions_of_one_length(tiny_qwen):
    """Longest question first: each batch's prompts are of about one length, so the prefill pads little."""
    lm = LM(*tiny_qwen)
    method = SingleAgent(lm, MethodConfig(max_new_tokens=2), answer_format="Box it.")
    questions = ["a", "a b c d e f g h", "a b", "a b c d e f g", "a b c d", "a b c d e"]
    assert method.length_order(questions) == [1, 3, 5, 4, 2, 0]
    assert method.length_order([]) == [] and list(method.run_stream([], by_length=True)) == []
    prefill, pads = lm.prefill, []

    def counting_prefill(cache, agent, prompts):
        pads.append(sum(max(map(len, prompts)) - len(p) for p in prompts))
        return prefill(cache, agent, prompts)

    lm.prefill = counting_prefill
    answers, padded = {}, {}
    for by_length in (False, True):
        pads.clear()
        got = dict(method.run_stream(questions, batch_size=2, refill=0.0, by_length=by_length))
        assert sorted(got) == list(range(6))
        answers[by_length], padded[by_length] = [got[i].final_text for i in range(6)], sum(pads)
    assert answers[True] == answers[False]
    # Question lengths 1, 10, 2, 9, 4, 6 tokens: pairs (1, 10), (2, 9), (4, 6) against (10, 9), (6, 4), (2, 1).
    assert padded == {False: 18, True: 4}


@torch.no_grad()
def test_sliding_window_traces_take_turns_instead_of_merging(tiny_qwen):
    """Gemma 3 style sliding-window layers keep only their window, so their traces cannot be
    left-padded into one cache: continuous batching falls back to one batch after another."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_qwen
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.layer_types = ["sliding_attention"] + ["full_attention"] * (config.num_hidden_layers - 1)
    config.use_sliding_window, config.sliding_window = True, 64
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        windowed = LM(AutoModelForCausalLM.from_config(config).eval(), tokenizer)
    assert not windowed.new_cache(1).mergeable and lm_cache_mergeable(tiny_qwen)
    method = SingleAgent(windowed, MethodConfig(max_new_tokens=6), answer_format="Box it.")
    got = dict(method.run_stream(QUESTIONS, batch_size=2, refill=1.0))
    assert [got[i].final_text for i in range(len(QUESTIONS))] == [t.final_text for t in method.run(QUESTIONS)]


def lm_cache_mergeable(pair) -> bool:
    return LM(*pair).new_cache(1).mergeable


@torch.no_grad()
def test_merged_caches_give_each_row_its_own_next_state(lm):
    a, b = lm.new_cache(1), lm.new_cache(2)
    ha = lm.prefill(a, "A", [ids(lm, "a short one")])
    hb = lm.prefill(b, "A", [ids(lm, "a much longer prompt than the first, with more tokens"), ids(lm, "mid size")])
    token = torch.tensor([[5]])
    alone = [
        lm.forward(c, "A", "text", torch.ones(n, 1, dtype=torch.long), input_ids=token.repeat(n, 1))
        for c, n in ((a, 1), (b, 2))
    ]
    a2, b2 = lm.new_cache(1), lm.new_cache(2)
    lm.prefill(a2, "A", [ids(lm, "a short one")])
    lm.prefill(b2, "A", [ids(lm, "a much longer prompt than the first, with more tokens"), ids(lm, "mid size")])
    a2.add_rows(b2)
    assert a2.batch_size == 3 and len(a2) == len(b2) == a2.kv.get_seq_length()
    merged = lm.forward(a2, "A", "text", torch.ones(3, 1, dtype=torch.long), input_ids=token.repeat(3, 1))
    torch.testing.assert_close(merged, torch.cat(alone), rtol=1e-4, atol=1e-4)
    assert ha.shape == (1, hb.shape[1])


@torch.no_grad()
def test_hierarchical_agents_do_not_see_each_other(lm):
    """A domain agent's latent thoughts are the same whether or not a sibling ran before it."""
    sys2 = SystemSpec(
        "h", "hierarchical", [AgentSpec("M", "math"), AgentSpec("S", "science"), AgentSpec("F", "summariser")]
    )
    method = LatentMAS(
        lm, MethodConfig(latent_steps=2, max_new_tokens=1, readout_k=3), answer_format="Box it.", system=sys2
    )
    trace = method.run([QUESTIONS[1]])[0]
    alone = LatentMAS(
        lm,
        MethodConfig(latent_steps=2, max_new_tokens=1, readout_k=3),
        answer_format="Box it.",
        system=SystemSpec("h1", "hierarchical", [AgentSpec("S", "science"), AgentSpec("F", "summariser")]),
    )
    trace_alone = alone.run([QUESTIONS[1]])[0]
    assert trace.agents[1].readout == trace_alone.agents[0].readout


@pytest.mark.parametrize("topology", ["sequential", "hierarchical"])
@torch.no_grad()
def test_question_stated_once_where_the_cache_already_holds_it(tiny_qwen, topology):
    """--no-repeat-question: only agents that see no earlier prompt with the question are given it;
    the others read it through the cache, so their prompts (and the trace) are shorter."""
    lm = LM(*tiny_qwen)
    system = load_system(topology)
    question = QUESTIONS[1]
    texts, lengths = {}, {}
    for repeat in (True, False):
        method = LatentMAS(
            lm,
            MethodConfig(latent_steps=1, max_new_tokens=2, repeat_question=repeat),
            answer_format="Box it.",
            system=system,
        )
        prompts = method.build_prompts([question])
        texts[repeat] = [lm.tokenizer.decode(p[0]) for p in prompts]
        lengths[repeat] = len(method.build_context([question]).cache)
    asked = [question in t for t in texts[False]]
    # Sequential: the planner only. Hierarchical: every domain agent (they see no sibling), not the summariser.
    upstream = len(system.agents) - 1
    assert asked == ([True] + [False] * upstream if topology == "sequential" else [True] * upstream + [False])
    assert all(question in t for t in texts[True])
    assert all("The question and earlier agents' reasoning" in t for t, a in zip(texts[False], asked) if not a)
    assert lengths[False] < lengths[True]
    with pytest.raises(ValueError, match="must be given the question"):  # it would have no way to read it
        agent_messages("Solve it.", None, final=True, answer_format="Box it.")


@torch.no_grad()
def test_zero_latent_steps_final_agent_reads_upstream_prompts(lm):
    cfg = MethodConfig(latent_steps=0, max_new_tokens=3)
    method = LatentMAS(lm, cfg, answer_format="Box it.", system=load_system("sequential"))
    trace = method.run([QUESTIONS[0]])[0]
    assert trace.latent_steps == 0
    n_prompt = sum(a.prompt_tokens for a in trace.agents)
    assert n_prompt > trace.agents[-1].prompt_tokens  # upstream prompts are in the trace


@torch.no_grad()
def test_sampling_is_seeded(lm):
    cfg = MethodConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    a = SingleAgent(lm, cfg, answer_format="x").run(QUESTIONS[:2])
    b = SingleAgent(lm, cfg, answer_format="x").run(QUESTIONS[:2])
    assert [t.final_text for t in a] == [t.final_text for t in b]
    with pytest.raises(Exception, match="top_p"):
        Sampling(temperature=1.0, top_p=0.0)


@torch.no_grad()
def test_min_new_tokens_forbids_an_empty_answer(lm):
    """The greedy first token is made a stop token: without min_new_tokens the answer is empty."""
    prompt = lm.chat_ids([{"role": "user", "content": QUESTIONS[0]}])
    first = int(lm.logits(lm.prefill(lm.new_cache(1), "A", [prompt])).argmax(-1))
    stop = lm.stop_ids
    lm.stop_ids = torch.tensor([first])
    try:
        runs = {}
        for k in (0, 1, 3):
            cache = lm.new_cache(1)
            runs[k] = decode(lm, cache, "A", lm.prefill(cache, "A", [prompt]), 8, Sampling(min_new_tokens=k))[0]
    finally:
        lm.stop_ids = stop
    assert runs[0] == [first]
    assert runs[1][0] != first and len(runs[1]) >= 2
    assert first not in runs[3][:3]
    with pytest.raises(DiffMASError, match="min_new_tokens"):
        MethodConfig(max_new_tokens=4, min_new_tokens=5)


def test_looping_finds_a_repeated_block_only():
    assert looping([7, 1, 2, 3] * 5, 16)  # period 3 ... ending on a whole window of the block
    assert looping([5] + [9] * 16, 16)
    assert not looping([9] * 15, 16)  # too short to judge
    assert not looping(list(range(40)), 16)
    assert not looping([1, 2, 3, 4, 5] * 4, 16)  # period 5 fits only 3 times in 16 tokens
    assert looping([1, 2, 3, 4, 5] * 4, 20)


@torch.no_grad()
def test_stop_loops_cuts_looping_rows_and_leaves_the_rest(lm):
    """Greedy rows of a tiny random model fall into loops: with stop_loops they end as soon as the
    window is periodic, as a prefix of the unchecked output; the other rows are unchanged."""
    prompts = [lm.chat_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    outs = {}
    for window in (0, 16):
        cache = lm.new_cache(len(prompts))
        outs[window] = decode(lm, cache, "A", lm.prefill(cache, "A", prompts), 80, Sampling(stop_loops=window))
    cut = 0
    for full, short in zip(outs[0], outs[16]):
        assert full[: len(short)] == short
        if len(short) < len(full):
            cut += 1
            assert looping(short, 16) and not looping(short[:-1], 16)  # stopped at the first periodic window
        else:
            assert not any(looping(full[:n], 16) for n in range(len(full)))
    assert cut >= 1, "the tiny model did not loop: choose another prompt"
    with pytest.raises(DiffMASError, match="stop_loops"):
        MethodConfig(stop_loops=4)


def test_context_overflow_names_the_example(lm):
    cfg = MethodConfig(max_new_tokens=lm.max_positions)
    method = SingleAgent(lm, cfg, answer_format="x")
    with pytest.raises(ContextLengthError, match="example q-7"):
        method.run(["hello"], ids=["q-7"])


def test_answer_cue_closes_its_brace_only():
    cue = AnswerCue("so \\boxed{", [1], lambda key, text: False)
    assert cue.closed("42}") and cue.closed("C} because")
    assert cue.closed("\\frac{1}{2}}")
    assert not cue.closed("4") and not cue.closed("\\frac{1}{2}")  # "\\boxed{4" is not yet "\\boxed{42}"
    with pytest.raises(DiffMASError, match="open brace"):
        AnswerCue("so the answer is", [1], lambda key, text: False)
    with pytest.raises(DiffMASError, match="max_new_tokens"):
        AnswerCue("\\boxed{", [1], lambda key, text: False, max_new_tokens=0)


def _decode_all(lm: LM, prompts: list[list[int]], budget: int, cue: AnswerCue | None) -> list:
    pool = DecodePool(lm, "A", Sampling(), cue)
    cache = lm.new_cache(len(prompts))
    pool.add(cache, lm.prefill(cache, "A", prompts), budget, list(range(len(prompts))))
    done = {}
    while len(pool):
        done.update({f.key: f for f in pool.step()})
    return [done[k] for k in range(len(prompts))]


@torch.no_grad()
def test_answer_cue_continues_unreadable_answers_as_one_longer_prompt_would(lm):
    """Row 0 counts as readable, the others not: row 0 is untouched; every other row is its bare
    answer (without the stop token that ended it), then the cue, then what greedy decoding writes
    after prompt + bare answer + cue in one plain prompt; alone or in a batch, the same."""
    prompts = [lm.chat_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    text = "\n\nTherefore, the final answer is \\boxed{"
    cue = AnswerCue(text, ids(lm, text), lambda key, text: key == 0, max_new_tokens=5)
    bare = _decode_all(lm, prompts, 12, None)
    cued = _decode_all(lm, prompts, 12, cue)
    assert cued[0].ids == bare[0].ids and cued[0].cue_at is None
    stop = set(lm.stop_ids.tolist())
    for k in range(1, len(prompts)):
        own = bare[k].ids[:-1] if bare[k].ids[-1] in stop else bare[k].ids
        at = cued[k].cue_at
        assert at == len(own) and cued[k].ids[:at] == own and cued[k].ids[at : at + len(cue.ids)] == cue.ids
        after = cued[k].ids[at + len(cue.ids) :]
        assert 1 <= len(after) <= cue.max_new_tokens
        alone = prompts[k] + own + cue.ids
        cache = lm.new_cache(1)
        plain = decode(lm, cache, "A", lm.prefill(cache, "A", [alone]), len(after))[0]
        assert after == plain
        assert _decode_all(lm, [prompts[k]], 12, replace(cue, readable=lambda key, text: False))[0].ids == cued[k].ids


@torch.no_grad()
def test_answer_cue_with_choices_answers_with_the_likeliest_one(lm):
    """Odd rows have choices: their cued answer is one of them, the likeliest, and the brace is
    closed; even rows write freely, as without choices."""
    prompts = [lm.chat_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    text = "\n\nTherefore, the letter of the correct option is \\boxed{"
    letters = [ids(lm, "A")[0], ids(lm, "B")[0]]
    close = ids(lm, "}")
    cue = AnswerCue(
        text,
        ids(lm, text),
        lambda key, text: False,
        max_new_tokens=3,
        choices=lambda key: letters if key % 2 else None,
        close_ids=close,
    )
    free = _decode_all(lm, prompts, 6, replace(cue, choices=None))
    for k, f in enumerate(_decode_all(lm, prompts, 6, cue)):
        if k % 2:
            start = f.cue_at + len(cue.ids)
            assert f.ids[:start] == free[k].ids[:start] and f.ids[start + 1 :] == close
            assert f.ids[start] in letters and f.cue_tokens == len(cue.ids) + len(close)
            logits = _logits_after(lm, prompts[k] + f.ids[:start])
            assert f.ids[start] == max(letters, key=lambda t: logits[t])
        else:
            assert f.ids == free[k].ids and f.cue_tokens == len(cue.ids)
    assert any(f.ids[f.cue_at + len(cue.ids)] not in letters for f in free), "choices were never needed"
    with pytest.raises(DiffMASError, match="close_ids"):
        AnswerCue(text, ids(lm, text), lambda key, text: False, choices=lambda key: letters)


def _logits_after(lm: LM, prompt: list[int]) -> torch.Tensor:
    return lm.logits(lm.prefill(lm.new_cache(1), "A", [prompt]))[0]


def test_forward_uses_the_supported_cache_argument(tiny_qwen):
    # transformers 5.24 warns that past_key_values "will be removed in version 5.40.0".
    import warnings

    lm = LM(*tiny_qwen)
    cache = lm.new_cache(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        with torch.no_grad():
            lm.prefill(cache, "Solver", [[1, 2, 3]])
    assert len(cache) == 3


@torch.no_grad()
def test_each_answer_is_charged_its_share_of_the_compute(tiny_qwen, monkeypatch):
    """With a clock that ticks one second per reading, a batch's preparation costs one second,
    shared by its rows, and each decoding step one second, shared by the rows it ran: no row is
    charged for the others, and the shares add up to the time spent."""
    import itertools

    from diffmas.methods import base

    lm = LM(*tiny_qwen)
    method = SingleAgent(lm, MethodConfig(max_new_tokens=6, min_new_tokens=1), answer_format="Answer.")
    questions = QUESTIONS * 2
    plain = dict(method.run_stream(questions, batch_size=3, refill=0.0))
    clock = itertools.count()
    monkeypatch.setattr(base, "_clock", lambda: float(next(clock)))
    charged = dict(method.run_stream(questions, batch_size=3, refill=0.0))
    assert [charged[i].final_text for i in range(len(questions))] == [
        plain[i].final_text for i in range(len(questions))
    ]
    readings = next(clock)  # two per timed phase
    assert sum(t.seconds for t in charged.values()) == pytest.approx(readings / 2)
    assert all(t.seconds >= 1 / 3 + 1 / 3 for t in charged.values())  # its preparation share and >= 1 step


@torch.no_grad()
def test_a_decoding_pool_drops_the_columns_no_row_reads(tiny_qwen):
    """A row joins a pool left-padded to the pool's width; when the rows that needed those columns
    leave, the pool drops them, so its width (and each step's cost) is that of its rows, not of
    the run's history. The row decodes what it decodes alone (float32)."""
    lm = LM(*tiny_qwen)
    sampling = Sampling(min_new_tokens=1000)  # rows end at their budgets only

    def add(pool, prompt, budget, key):
        cache = lm.new_cache(1)
        pool.add(cache, lm.prefill(cache, "A", [ids(lm, prompt)]), budget, [key])
        return len(ids(lm, prompt))

    alone = DecodePool(lm, "A", sampling)
    add(alone, "the second question", 20, "b")
    expected = [f for _ in range(20) for f in alone.step()]
    pool = DecodePool(lm, "A", sampling)
    a_prompt = add(pool, "the first question, which is a little longer", 100, "a")
    assert not [f for _ in range(90) for f in pool.step()]
    b_prompt = add(pool, "the second question", 20, "b")
    assert len(pool.cache) == a_prompt + 90 >= b_prompt + 64  # b left-padded to a's width
    finished = [f for _ in range(10) for f in pool.step()]
    assert [f.key for f in finished] == ["a"]
    assert len(pool.cache) == b_prompt + 10  # only b's own columns are left
    finished = [f for _ in range(10) for f in pool.step()]
    assert [f.key for f in finished] == ["b"] and finished[0].ids == expected[0].ids
