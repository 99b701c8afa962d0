"""Reader training's stored upstream traces (diffmas.train.traces), on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from diffmas.adapters import AgentAdapters, LoraSettings
from diffmas.agents import load_system
from diffmas.engine import LM
from diffmas.latent import CommAdapter
from diffmas.methods import LatentMAS, MethodConfig
from diffmas.train.config import TrainConfig
from diffmas.train.objective import ObjectiveConfig, trajectory_loss
from diffmas.train.traces import TraceStore, rows_of
from diffmas.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["What is 2 + 3?", "Tom has 12 eggs and breaks 5. How many are left?", "Is 7 prime?"]
TARGETS = ["5. \\boxed{5}", "12 - 5 = 7. \\boxed{7}", "yes \\boxed{1}"]


def make(topology="sequential", steps=2, comm=True):
    from diffmas.models import build_tiny_model

    model, tokenizer = build_tiny_model("qwen2", seed=0, dtype=torch.float32)
    lm = LM(model, tokenizer)
    system = load_system(None, topology)
    method = LatentMAS(lm, MethodConfig(latent_steps=steps), answer_format="\\boxed{}", system=system)
    adapters = AgentAdapters(lm, [a.name for a in system.agents], LoraSettings(rank=4, dropout=0.0))
    if comm:
        method.comm = CommAdapter.from_lm(lm)
    return method, adapters


def store_of(method, adapters, tmp_path):
    return TraceStore(method, tmp_path / "traces", adapters, {"model": "tiny"})


def files(tmp_path) -> list:
    return sorted((tmp_path / "traces").rglob("*.safetensors"))


@pytest.mark.parametrize("topology", ["sequential", "hierarchical"])
def test_stored_trace_equals_a_fresh_one_bit_for_bit(tmp_path, topology):
    method, adapters = make(topology)
    store = store_of(method, adapters, tmp_path)
    with torch.no_grad():
        fresh = method.build_context(QUESTIONS, grad_last_k=0)
        built = store.context(QUESTIONS)  # built now, kept on disk
        read = store.context(QUESTIONS)  # read back from disk
    assert (store.built, store.reused) == (3, 3) and len(files(tmp_path)) == 3
    for ctx in (built, read):
        assert torch.equal(ctx.cache.real, fresh.cache.real) and torch.equal(ctx.cache.visible, fresh.cache.visible)
        assert ctx.cache.segments == fresh.cache.segments and ctx.prompts == fresh.prompts
        for mine, theirs in zip(rows_of(ctx.cache), rows_of(fresh.cache)):
            assert mine.segments == theirs.segments
            assert all(torch.equal(a, b) for a, b in zip(mine.keys + mine.values, theirs.keys + theirs.values))
        assert torch.equal(ctx.last_hidden, fresh.last_hidden)


def test_rows_read_back_in_another_batch_keep_their_trace(tmp_path):
    """A row's stored columns do not depend on the batch it is read back in: only the padding does."""
    method, adapters = make()
    store = store_of(method, adapters, tmp_path)
    with torch.no_grad():
        store.context(QUESTIONS)
        alone = store.context(QUESTIONS[1:2])
    assert store.built == 3 and store.reused == 1
    with torch.no_grad():
        together = store.context(QUESTIONS)
    first, second = rows_of(alone.cache)[0], rows_of(together.cache)[1]
    upstream = sum(n for *_, n in first.segments[:-1])  # before the final prompt
    assert first.segments == second.segments
    assert all(torch.equal(a[:, :upstream], b[:, :upstream]) for a, b in zip(first.keys, second.keys))


def test_a_changed_setting_builds_a_new_trace(tmp_path):
    method, adapters = make()
    store = store_of(method, adapters, tmp_path)
    with torch.no_grad():
        store.context(QUESTIONS[:1])
        method.config.latent_steps = 3  # latent steps
        store.context(QUESTIONS[:1])
        method.comm.scale.data.fill_(1.5)  # the communication map
        store.context(QUESTIONS[:1])
        upstream = method.system.agents[0].name  # what an upstream adapter does
        for name, p in adapters.peft_model.named_parameters():
            if "lora_B" in name and f".{adapters.adapter_of(upstream)}." in name:
                p.data.fill_(0.01)
        store.context(QUESTIONS[:1])
        method.config.repeat_question = True  # the prompts
        store.context(QUESTIONS[:1])
    assert store.built == 5 and store.reused == 0 and len(files(tmp_path)) == 5
    # Settings key the folder; the prompts (here: the question repeated) key the file within it.
    folders = [p for p in (tmp_path / "traces").iterdir() if p.is_dir()]
    assert len(folders) == 4 and all((f / "settings.json").exists() for f in folders)
    steps = sorted(json.loads((f / "settings.json").read_text())["upstream"][0]["steps"] for f in folders)
    assert steps == [2, 3, 3, 3]


def test_soft_latent_inputs_and_their_temperature_key_their_own_traces(tmp_path):
    method, adapters = make(comm=False)
    store = store_of(method, adapters, tmp_path)
    with torch.no_grad():
        hidden = rows_of(store.context(QUESTIONS[:1]).cache)[0]
        method.config.latent_input = "soft"
        soft = rows_of(store.context(QUESTIONS[:1]).cache)[0]
        method.config.soft_temperature = 0.5
        store.context(QUESTIONS[:1])
        method.config.soft_temperature = 1.0
        again = rows_of(store.context(QUESTIONS[:1]).cache)[0]
    assert store.built == 3 and store.reused == 1
    # a stored soft trace is read back as built; it differs from the hidden one
    assert not torch.equal(hidden.keys[-1], soft.keys[-1]) and torch.equal(soft.keys[-1], again.keys[-1])


def test_the_adapter_seed_does_not_change_the_key(tmp_path):
    """Freshly initialised LoRA adapters (B = 0) leave the trace as the base model writes it."""
    method, adapters = make()
    before = store_of(method, adapters, tmp_path).settings()
    for name, p in adapters.peft_model.named_parameters():
        if "lora_A" in name:
            p.data.normal_()
    assert store_of(method, adapters, tmp_path).settings() == before


def test_unreadable_or_foreign_files_are_rebuilt(tmp_path):
    method, adapters = make()
    store = store_of(method, adapters, tmp_path)
    with torch.no_grad():
        fresh = store.context(QUESTIONS[:2])
    first, second = files(tmp_path)
    first.write_bytes(first.read_bytes()[:100])  # truncated by a crash
    second.write_bytes(first.read_bytes())  # someone else's bytes
    with torch.no_grad():
        again = store.context(QUESTIONS[:2])
    assert store.built == 4 and store.reused == 0
    assert torch.equal(again.last_hidden, fresh.last_hidden)


def trained_losses(tiny_model_dir, tmp_path, **overrides) -> tuple[list[float], dict]:
    cfg = TrainConfig(
        model=tiny_model_dir,
        dtype="float32",
        task="synthetic-arith",
        limit=8,
        latent_steps=2,
        lora_rank=4,
        lora_dropout=0.0,
        lr=1e-3,
        batch_size=2,
        max_steps=8,  # two epochs: the second reads every trace back
        grad_through="none",
        trace_dir=str(tmp_path / "traces"),
        out=str(tmp_path / f"run-{len(list(tmp_path.iterdir()))}"),
        **overrides,
    )
    trainer = Trainer(cfg, progress=False)
    summary = trainer.train()
    log = [json.loads(line) for line in (trainer.out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in log], summary


def test_reader_training_matches_building_the_trace_at_every_step(tiny_model_dir, tmp_path):
    stored, summary = trained_losses(tiny_model_dir, tmp_path)
    fresh, plain = trained_losses(tiny_model_dir, tmp_path, trace_cache=False)
    assert plain["traces"] is None
    assert summary["traces"]["built"] == 8 and summary["traces"]["reused"] == 8
    assert summary["traces"]["mb_per_example"] > 0
    assert stored[:4] == fresh[:4]  # the first epoch: traces built in the very batches they train in
    assert stored == pytest.approx(fresh, rel=1e-5)  # later: read back into other batches (float32 rounding)
    again, rerun = trained_losses(tiny_model_dir, tmp_path)  # a second run reads every trace from disk
    assert rerun["traces"]["built"] == 0 and again == pytest.approx(stored, rel=1e-5)


def test_trajectory_loss_refuses_stored_traces_with_gradients_upstream(tmp_path):
    method, adapters = make()
    with pytest.raises(Exception, match="grad_through none"):
        trajectory_loss(
            method, QUESTIONS, TARGETS, ObjectiveConfig("full"), traces=store_of(method, adapters, tmp_path)
        )
