"""Per-agent LoRA adapters, the communication adapter and the trajectory loss, on tiny models.

Every test builds its own tiny model: attaching adapters mutates the model, and the session
fixtures must stay pristine.
"""

from __future__ import annotations

import pytest
import torch

from diffmas.agents import AgentSpec, SystemSpec
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.latent import CommAdapter, Realigner
from diffmas.methods import LatentMAS, MethodConfig
from diffmas.models import build_tiny_model
from diffmas.train import AgentAdapters, LoraSettings, ObjectiveConfig, attention_projections, trajectory_loss
from diffmas.train.objective import end_of_turn_id, target_ids

SYSTEM = SystemSpec(
    "s3", "sequential", [AgentSpec("Planner", "planner"), AgentSpec("Critic", "critic"), AgentSpec("Judger", "judger")]
)
UPSTREAM = ["Planner", "Critic"]
QUESTIONS = ["What is 2 + 3?", "Tom has 17 apples and gives 5 to Ann. How many are left?"]
TARGETS = ["2 + 3 = 5. \\boxed{5}", "17 - 5 = 12, so \\boxed{12}"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make(arch="qwen2", adapters=True, comm=True, steps=2, perturb=False, shared=False):
    """A LatentMAS over a fresh tiny model, with fresh (or randomly perturbed) adapters."""
    model, tokenizer = build_tiny_model(arch, seed=0)
    lm = LM(model, tokenizer)
    ad = None
    if adapters:
        with torch.random.fork_rng(devices=[]):  # PEFT draws LoRA A from the global generator
            torch.manual_seed(0)
            ad = AgentAdapters(lm, [a.name for a in SYSTEM.agents], LoraSettings(dropout=0.0, shared=shared))
        if perturb:  # fresh LoRA is the identity (B = 0): perturb it so every adapter matters
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in ad.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    method = LatentMAS(lm, MethodConfig(latent_steps=steps, max_new_tokens=4), answer_format="Box it.", system=SYSTEM)
    if comm:
        method.comm = CommAdapter.from_lm(lm)
    return method, ad


def grads(params) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in params]


def nonzero(gs) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in gs)


# -- adapters -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_attention_projections_are_detected(arch):
    model, _ = build_tiny_model(arch, seed=0)
    assert attention_projections(model) == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_base_frozen_and_every_adapter_stays_trainable_across_switches():
    method, ad = make()
    assert ad.adapter_names == ["Planner", "Critic", "Judger"]
    lora = {id(p) for p in ad.parameters()}
    base = [p for p in method.lm.model.parameters() if id(p) not in lora]
    assert base and not any(p.requires_grad for p in base)
    for agent in ["Critic", "Judger", "Planner"]:
        ad.activate(agent)
        assert ad.peft_model.active_adapter == agent
        assert all(p.requires_grad for p in ad.parameters())  # PEFT alone would freeze the others
    with pytest.raises(DiffMASError, match="no adapter for agent"):
        ad.activate("Stranger")
    _, shared = make(shared=True)
    assert shared.adapter_names == ["shared"]


def test_each_forward_runs_with_its_agents_adapter():
    method, ad = make(comm=False)
    seen = []
    handle = method.lm.decoder.register_forward_pre_hook(lambda m, a: seen.append(ad.peft_model.active_adapter))
    try:
        with torch.inference_mode():
            trace = method.run(QUESTIONS[:1])[0]
    finally:
        handle.remove()
    decoded = trace.generated_tokens - 1  # the first token comes from the prompt's last hidden state
    assert seen == ["Planner"] * 3 + ["Critic"] * 3 + ["Judger"] * (1 + decoded)


# -- gradients through the KV cache -----------------------------------------------------------------


@pytest.mark.parametrize("freeze", ["frozen", "no_grad"])
def test_frozen_append_keeps_the_graph_of_earlier_entries(freeze):
    model, tokenizer = build_tiny_model("qwen2", seed=0)
    lm = LM(model, tokenizer)
    ids = torch.tensor([tokenizer("first agent thinks", add_special_tokens=False)["input_ids"]])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # (1, T, d)
    cache = lm.new_cache(1)
    lm.forward(cache, "A", "prompt", torch.ones_like(ids), inputs_embeds=embeds)
    with cache.frozen() if freeze == "frozen" else torch.no_grad():
        lm.forward(cache, "B", "prompt", torch.ones_like(ids), input_ids=ids)
    lm.forward(cache, "C", "prompt", torch.ones_like(ids), input_ids=ids).sum().backward()
    if freeze == "frozen":
        assert embeds.grad is not None and embeds.grad.abs().sum() > 0
        assert len(cache) == cache.kv.get_seq_length() == 3 * ids.shape[1]
    else:  # the hazard frozen() exists for: DynamicCache's cat under no_grad detaches all of A
        assert embeds.grad is None


# -- (d) identity at initialisation ---------------------------------------------------------------


@pytest.mark.parametrize("realign", [True, False])
def test_comm_adapter_at_init_is_the_realigner(realign):
    model, tokenizer = build_tiny_model("qwen2", seed=0)
    lm = LM(model, tokenizer)
    h = torch.randn(3, model.config.hidden_size) * 30
    expected = Realigner(lm, realign=realign)(h)
    assert torch.equal(CommAdapter.from_lm(lm, realign=realign)(h), expected)


@torch.no_grad()
def test_fresh_adapters_and_comm_reproduce_latent_mas():
    plain, _ = make(adapters=False, comm=False)
    trained, _ = make(adapters=True, comm=True)
    a = plain.build_context(QUESTIONS)
    b = trained.build_context(QUESTIONS)
    torch.testing.assert_close(b.last_hidden, a.last_hidden, rtol=0, atol=1e-6)
    assert [t.final_text for t in trained.run(QUESTIONS)] == [t.final_text for t in plain.run(QUESTIONS)]


# -- (a) training touches adapters only ------------------------------------------------------------


def test_training_changes_every_adapter_and_not_the_base():
    method, ad = make()
    lora = {id(p) for p in ad.parameters()}
    base_before = {n: p.detach().clone() for n, p in method.lm.model.named_parameters() if id(p) not in lora}
    lora_before = {a: [p.detach().clone() for p in ad.parameters(a)] for a in ad.adapter_names}
    comm_before = method.comm.weight.detach().clone()
    opt = torch.optim.Adam([*ad.parameters(), *method.comm.parameters()], lr=1e-2)
    for _ in range(3):  # B starts at 0, so A only gets a gradient from the second step on
        opt.zero_grad()
        trajectory_loss(method, QUESTIONS, TARGETS, ObjectiveConfig("full")).loss.backward()
        opt.step()
    for n, p in method.lm.model.named_parameters():
        if id(p) not in lora:
            assert torch.equal(p, base_before[n]), n
    for agent, before in lora_before.items():
        changed = [not torch.equal(p, q) for p, q in zip(ad.parameters(agent), before)]
        assert all(changed), f"{agent}: {changed.count(False)} of {len(changed)} LoRA tensors unchanged"
    assert not torch.equal(method.comm.weight, comm_before)


def _lora_run(dtype, float32_products):
    """Loss, LoRA gradients, LoRA weight dtypes and the dtypes of the LoRA layers' inputs, for one
    perturbed-adapter trajectory loss on a tiny model in ``dtype``."""
    model, tokenizer = build_tiny_model("qwen2", seed=0, dtype=dtype)
    lm = LM(model, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ad = AgentAdapters(
            lm, [a.name for a in SYSTEM.agents], LoraSettings(dropout=0.0, float32_products=float32_products)
        )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ad.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    seen = set()
    for name, module in model.named_modules():
        if name.endswith(".lora_A.Planner"):
            module.register_forward_hook(lambda mod, args, out: seen.add(args[0].dtype))
    method = LatentMAS(lm, MethodConfig(latent_steps=2, max_new_tokens=4), answer_format="Box it.", system=SYSTEM)
    loss = trajectory_loss(method, QUESTIONS, TARGETS, ObjectiveConfig("full")).loss
    loss.backward()
    params = list(ad.parameters())
    return loss.detach().float(), grads(params), {p.dtype for p in params}, seen


def test_lora_products_run_in_the_models_dtype_on_float32_weights():
    """With ``float32_products=False`` a bfloat16 model's LoRA layers read their bfloat16 input as it
    is (PEFT, and the default, cast every input to float32) while the weights, and so their
    gradients, stay float32."""
    loss, gs, weights, seen = _lora_run(torch.bfloat16, float32_products=False)
    ref_loss, ref_gs, ref_weights, ref_seen = _lora_run(torch.bfloat16, float32_products=True)
    assert weights == ref_weights == {torch.float32}
    assert seen == {torch.bfloat16} and ref_seen == {torch.float32}
    assert all(g is not None and g.dtype == torch.float32 for g in gs)
    assert torch.allclose(loss, ref_loss, rtol=2e-2)
    flat, ref_flat = torch.cat([g.flatten() for g in gs]), torch.cat([g.flatten() for g in ref_gs])
    assert torch.nn.functional.cosine_similarity(flat, ref_flat, dim=0) > 0.98
    # In a float32 model there is nothing to cast: both settings compute the same thing.
    loss32, gs32, _, seen32 = _lora_run(torch.float32, float32_products=False)
    ref32, ref_gs32, _, _ = _lora_run(torch.float32, float32_products=True)
    assert seen32 == {torch.float32} and torch.equal(loss32, ref32)
    assert all(torch.equal(a, b) for a, b in zip(gs32, ref_gs32))


# -- (b) how far gradients reach -------------------------------------------------------------------


def _grads_for(mode: str, k: int = 1, dropout: float = 0.0):
    method, ad = make(perturb=True, steps=3)
    out = trajectory_loss(method, QUESTIONS, TARGETS, ObjectiveConfig(mode, last_k=k, comm_dropout=dropout))
    out.loss.backward()
    per_agent = {a: grads(ad.parameters(a)) for a in ad.adapter_names}
    return out.loss.detach(), per_agent, method.comm.weight.grad


def test_gradients_reach_upstream_only_as_configured():
    loss_full, full, comm_full = _grads_for("full")
    loss_none, none, comm_none = _grads_for("none")
    loss_k, last1, comm_k = _grads_for("last_k", k=1)
    torch.testing.assert_close(loss_none, loss_full)  # the forward pass is the same
    torch.testing.assert_close(loss_k, loss_full)
    for agent in UPSTREAM:
        assert nonzero(full[agent]), agent
        assert all(g is None for g in none[agent]), agent
        assert nonzero(last1[agent]), agent
        assert any(not torch.allclose(a, b) for a, b in zip(full[agent], last1[agent])), agent
    for g in (full, none, last1):
        assert nonzero(g["Judger"])
    assert comm_none is None and comm_full is not None and comm_k is not None
    assert not torch.allclose(comm_full, comm_k)


def test_last_k_runs_only_the_last_k_latent_steps_with_grad():
    method, _ = make(steps=3)
    calls = []
    original = method.lm.forward_states

    def recording(cache, agent, kind, *args, **kwargs):
        calls.append((agent, kind, torch.is_grad_enabled()))
        return original(cache, agent, kind, *args, **kwargs)

    method.lm.forward_states = recording  # instance attribute: LM.forward calls it too
    trajectory_loss(method, QUESTIONS, TARGETS, ObjectiveConfig("last_k", last_k=1))
    upstream = [("prompt", False), ("latent", False), ("latent", False), ("latent", True)]
    expected = [(a, kind, g) for a in UPSTREAM for kind, g in upstream]
    assert calls == expected + [("Judger", "prompt", True), ("Judger", "text", True)]


def test_full_comm_dropout_cuts_the_upstream_gradient():
    _, g, _ = _grads_for("full", dropout=1.0)
    for agent in UPSTREAM:  # hidden keys get attention weight exactly 0
        assert not nonzero(g[agent]), agent
    assert nonzero(g["Judger"])


@torch.no_grad()
def test_hiding_upstream_is_per_row():
    method, _ = make(perturb=True)
    base = method.build_context(QUESTIONS).last_hidden
    hidden = method.build_context(QUESTIONS, hide_from_final=torch.tensor([[True, True], [False, False]])).last_hidden
    assert not torch.allclose(hidden[0], base[0])
    torch.testing.assert_close(hidden[1], base[1])


# -- (c) overfitting a fixed batch -----------------------------------------------------------------


def test_loss_decreases_when_overfitting_a_batch():
    method, ad = make()
    opt = torch.optim.Adam([*ad.parameters(), *method.comm.parameters()], lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = trajectory_loss(method, QUESTIONS, TARGETS).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # The tiny model's frozen head (std 0.02) behind a frozen RMSNorm bounds its logits to about
    # +-1.3, so the loss cannot fall far below ~5 (log 512 = 6.2): ask for a clear, steady drop.
    assert losses[-1] < losses[0] - 0.3, losses
    assert max(losses[-5:]) < min(losses[:3]), losses


# -- (e) padding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@torch.no_grad()
def test_batched_loss_equals_per_example_loss(arch):
    method, _ = make(arch, perturb=True)
    targets = [TARGETS[0], "12"]  # different target lengths: right padding inside the batch
    batched = trajectory_loss(method, QUESTIONS, targets)
    assert batched.tokens[0] != batched.tokens[1]
    for b in range(2):
        alone = trajectory_loss(method, QUESTIONS[b : b + 1], targets[b : b + 1])
        torch.testing.assert_close(batched.per_example[b], alone.per_example[0], atol=1e-5, rtol=1e-5)
    weights = batched.tokens / batched.tokens.sum()
    torch.testing.assert_close(batched.loss, (batched.per_example * weights).sum())


# -- targets and settings ---------------------------------------------------------------------------


def test_targets_end_with_the_turn_end_token():
    model, tokenizer = build_tiny_model("qwen2", seed=0)
    lm = LM(model, tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(lm) == im_end
    ids = target_ids(lm, "\\boxed{5}")
    assert ids[-1] == im_end and lm.tokenizer.decode(ids[:-1]) == "\\boxed{5}"


def test_objective_config_is_validated():
    assert ObjectiveConfig("none").grad_last_k == 0 and ObjectiveConfig("full").grad_last_k is None
    assert ObjectiveConfig("last_k", last_k=3).grad_last_k == 3
    for bad in (dict(grad_through="some"), dict(grad_through="last_k", last_k=0), dict(comm_dropout=1.5)):
        with pytest.raises(DiffMASError):
            ObjectiveConfig(**bad)


# -- gradient checkpointing ------------------------------------------------------------------------


def test_mlp_checkpointing_gives_the_same_loss_and_gradients():
    from diffmas.train.memory import disable_mlp_checkpointing, enable_mlp_checkpointing

    results = []
    for checkpointed in (False, True):
        method, ad = make(perturb=True, steps=2)
        model = method.lm.model
        model.train()
        if checkpointed:
            assert enable_mlp_checkpointing(model, adapters=len(ad.adapter_names)) == model.config.num_hidden_layers
        calls = []  # every tensor autograd keeps for the backward pass
        with torch.autograd.graph.saved_tensors_hooks(lambda t: calls.append(1) or t, lambda t: t):
            out = trajectory_loss(method, QUESTIONS, TARGETS, ObjectiveConfig("full"))
        out.loss.backward()
        results.append((out.loss.detach(), grads(ad.parameters()), method.comm.weight.grad.clone(), len(calls)))
        if checkpointed:
            disable_mlp_checkpointing(model)
            assert not any(hasattr(m, "_diffmas_forward") for m in model.modules())
    (loss_a, grads_a, comm_a, saved_a), (loss_b, grads_b, comm_b, saved_b) = results
    torch.testing.assert_close(loss_b, loss_a)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a)
    torch.testing.assert_close(comm_b, comm_a)
    assert saved_b < saved_a  # the MLPs' activations were not kept for the backward pass


def test_checkpointing_refuses_per_agent_lora_inside_the_mlp():
    from diffmas.train.memory import enable_mlp_checkpointing

    model, tokenizer = build_tiny_model("qwen2", seed=0)
    lm = LM(model, tokenizer)
    AgentAdapters(lm, ["p1", "p2"], LoraSettings(target_modules=["q_proj", "up_proj"]))
    with pytest.raises(DiffMASError, match="shared-adapter"):
        enable_mlp_checkpointing(model, adapters=2)
    assert enable_mlp_checkpointing(model, adapters=1) == model.config.num_hidden_layers


def test_grad_fidelity_benchmark_compares_every_agent(tiny_model_dir, tmp_path):
    """benchmarks/diagnostics/grad_fidelity.py on a tiny model: a row per agent and layer half, the comm map
    and 'all', with both dtypes' norms; float32 against float32 would be exact, bfloat16 is not."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "diagnostics" / "grad_fidelity.py"
    spec = importlib.util.spec_from_file_location("grad_fidelity", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "fidelity.json"
    assert (
        bench.main(
            [
                "--model",
                tiny_model_dir,
                "--task",
                "synthetic-arith",
                "--latent-steps",
                "2",
                "--scratch",
                str(tmp_path / "scratch"),
                "--out",
                str(out),
                "--variant",
                "packed=false",
                "--variant-dtype",
                "float32",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["variant"] == {"packed": False} and report["seconds"]["variant"] > 0
    # float32 against float32 on other kernels: rounding at float32's level barely moves a gradient.
    assert all(r["cosine_variant"] > 0.999 and r["norm_variant"] > 0 for r in report["rows"])
    groups = {r["group"] for r in report["rows"]}
    assert "all" in groups and "comm adapter" in groups
    for agent in ("Planner", "Critic", "Refiner", "Judger"):
        assert f"{agent}, first half of the layers" in groups, groups
    for r in report["rows"]:
        assert r["norm_float32"] > 0 and r["norm_bfloat16"] > 0 and -1.0001 <= r["cosine"] <= 1.0001
    assert report["loss_float32"] == pytest.approx(report["loss_bfloat16"], rel=0.05)
    # The grouping itself: layer halves and the comm map.
    assert (
        bench.group_of("base_model.model.model.layers.3.self_attn.q_proj.lora_B.Critic.weight", 4)
        == "Critic, second half of the layers"
    )
    assert bench.group_of("comm_adapter.scale", 4) == "comm adapter"
