"""`diffmas collect` and the two-stage schedule (each agent's role first, then the joint protocol)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffmas.agents import load_system
from diffmas.cli import main
from diffmas.engine import LM
from diffmas.errors import DataError, DiffMASError
from diffmas.methods import MethodConfig, TextMAS
from diffmas.models import build_tiny_model
from diffmas.tasks import get_task
from diffmas.train import AgentAdapters, LoraSettings
from diffmas.train.collect import ATTEMPTS, TRAJECTORIES, kept_trajectories, load_trajectories
from diffmas.train.config import TrainConfig
from diffmas.train.data import build_items
from diffmas.train.objective import role_loss
from diffmas.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ["Planner", "Critic", "Refiner", "Judger"]  # the built-in sequential system


pytestmark = pytest.mark.usefixtures("one_thread")


def collect_args(tiny_model_dir, out, *extra):
    return [
        "collect",
        "--model",
        tiny_model_dir,
        "--dtype",
        "float32",
        "--task",
        "synthetic-arith",
        "--limit",
        "3",
        "--samples",
        "2",
        "--max-new-tokens",
        "4",
        "--agent-max-new-tokens",
        "3",
        "--batch-size",
        "4",
        "--out",
        str(out),
        *extra,
    ]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_collect_keeps_only_correct_attempts_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    task = get_task("synthetic-arith")
    # A tiny random model never solves a problem: call every attempt of sample 0 correct instead.
    real_score = type(task).score
    seen = []

    def score(self, text, example):
        seen.append(text)
        pred, _ = real_score(self, text, example)
        return pred, len(seen) % 2 == 1

    monkeypatch.setattr(type(task), "score", score)
    out = tmp_path / "collect"
    assert main(collect_args(tiny_model_dir, out)) == 0
    attempts = lines(out / ATTEMPTS)
    assert sorted((r["id"], r["sample"]) for r in attempts) == sorted(
        (ex.id, s) for ex in task.load(split="train", limit=3).examples for s in (0, 1)
    )
    assert all(
        [a["agent"] for a in r["agents"]] == AGENTS and all(isinstance(a["text"], str) for a in r["agents"])
        for r in attempts
    )
    kept = load_trajectories(out)
    assert [(r["id"], r["sample"]) for r in kept] == [(r["id"], r["sample"]) for r in attempts if r["correct"]]
    assert 0 < len(kept) < len(attempts)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attempts"] == 6 and summary["kept"] == len(kept)

    # Killed mid-write: the last attempt lost and the line before it torn. --resume redoes both.
    raw = (out / ATTEMPTS).read_text().splitlines()
    (out / ATTEMPTS).write_text("\n".join(raw[:-2]) + "\n" + raw[-2][:10])
    assert main(collect_args(tiny_model_dir, out)) == 1  # refuses to overwrite without --resume
    assert main(collect_args(tiny_model_dir, out, "--resume")) == 0
    again = lines(out / ATTEMPTS)
    assert sorted((r["id"], r["sample"]) for r in again) == sorted((r["id"], r["sample"]) for r in attempts)


def test_greedy_teacher_with_several_samples_is_refused(tiny_model_dir, tmp_path, capsys):
    assert main(collect_args(tiny_model_dir, tmp_path / "c", "--temperature", "0")) == 1
    assert "same attempt" in capsys.readouterr().err


def trajectory_rows(examples, texts=None) -> list[dict]:
    return [
        {
            "id": ex.id,
            "sample": 0,
            "question": ex.question,
            "correct": True,
            "agents": [
                {"agent": a, "role": a.lower(), "text": (texts or {}).get(a, f"{a} says {ex.gold}.")} for a in AGENTS
            ],
        }
        for ex in examples
    ]


def write_trajectories(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / TRAJECTORIES).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_items_from_trajectories_are_checked():
    task = get_task("synthetic-arith")
    examples = task.load(split="train", limit=4).examples
    rows = trajectory_rows(examples[:2])
    items = build_items(task, examples, rows, "reference", AGENTS)
    assert [i.target for i in items] == [task.training_target(ex) for ex in examples[:2]]
    assert items[0].texts == [a["text"] for a in rows[0]["agents"]]
    assert build_items(task, examples, rows, "trajectory", AGENTS)[1].target == rows[1]["agents"][-1]["text"]
    with pytest.raises(DataError, match="outside this run"):  # e.g. a held-out problem: never train on it
        build_items(task, examples[2:], rows, "reference", AGENTS)
    with pytest.raises(DataError, match="same --system"):
        build_items(task, examples, rows, "reference", ["Solver", "Judger"])
    with pytest.raises(DataError, match="needs --trajectories"):
        build_items(task, examples, None, "trajectory")


def test_role_loss_trains_each_agent_on_its_own_text():
    model, tokenizer = build_tiny_model("qwen2", seed=0)
    lm = LM(model, tokenizer)
    system = load_system(None, "sequential")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapters = AgentAdapters(lm, AGENTS, LoraSettings(dropout=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a fresh LoRA has B = 0, so A would get no gradient
        for p in adapters.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    teacher = TextMAS(lm, MethodConfig(), answer_format="Box it.", system=system)
    questions = ["What is 2 + 3?", "What is 7 - 4?"]
    texts = [[f"{a}: step {i}" for a in AGENTS] for i in range(2)]
    out = role_loss(teacher, questions, texts)
    out.loss.backward()
    for agent in AGENTS:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.parameters(agent)), agent
    own = [len(teacher.lm.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts[0]]
    assert int(out.tokens[0]) == sum(own)  # every agent's own text, plus its end-of-turn token
    with pytest.raises(DiffMASError, match="one text per agent"):
        role_loss(teacher, questions, [t[:2] for t in texts])


def test_two_stage_schedule_logs_role_then_joint_steps(tiny_model_dir, tmp_path):
    task = get_task("synthetic-arith")
    traj = write_trajectories(tmp_path / "traj", trajectory_rows(task.load(split="train", limit=6).examples))
    cfg = TrainConfig(
        model=tiny_model_dir,
        dtype="float32",
        task="synthetic-arith",
        limit=8,
        latent_steps=1,
        lora_rank=4,
        lora_dropout=0.0,
        batch_size=2,
        max_steps=4,
        save_every=10,
        trajectories=str(traj),
        role_steps=2,
        out=str(tmp_path / "run"),
    )
    trainer = Trainer(cfg, progress=False)
    assert len(trainer.items) == 6 and len(trainer.examples) == 8
    trainer.train()
    log = lines(tmp_path / "run" / "log.jsonl")
    assert [r["stage"] for r in log] == ["role", "role", "joint", "joint"]
    assert [r["latent_steps"] for r in log] == [0, 0, 1, 1]
    for bad in (
        dict(role_steps=1, trajectories=None),
        dict(role_steps=1, method="single_sft"),
        dict(target="trajectory", trajectories=None),
    ):
        with pytest.raises(DiffMASError):
            TrainConfig(**{**dict(trajectories=str(traj)), **bad})
    with pytest.raises(DiffMASError, match="no step"):
        Trainer(TrainConfig(**{**cfg.__dict__, "role_steps": 4, "out": str(tmp_path / "r2")}), progress=False)


def always_correct(monkeypatch, task):
    real_score = type(task).score
    monkeypatch.setattr(type(task), "score", lambda self, text, ex: (real_score(self, text, ex)[0], True))


@pytest.mark.parametrize("method", ["single", "latent_mas"])
def test_any_untrained_method_can_teach(tiny_model_dir, tmp_path, monkeypatch, capsys, method):
    task = get_task("synthetic-arith")
    always_correct(monkeypatch, task)
    out = tmp_path / method
    assert main(collect_args(tiny_model_dir, out, "--method", method, "--latent-steps", "1")) == 0
    printed = capsys.readouterr().out
    assert "6 of 6 attempts correct" in printed and "per attempt" in printed
    attempts = lines(out / ATTEMPTS)
    texts = [[a["text"] for a in r["agents"]] for r in attempts]
    if method == "single":
        assert all(len(t) == 1 and isinstance(t[0], str) for t in texts)
    else:  # upstream agents think in latent steps: they write no text
        assert all(t[:-1] == [None, None, None] and isinstance(t[-1], str) for t in texts)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["seconds_per_attempt"] > 0
    assert summary["kept"] + summary["repeats_dropped"] == 6 == summary["correct"]
    assert len(load_trajectories(out)) == summary["kept"]


def test_kept_trajectories_drop_repeated_texts():
    def row(i, sample, text, correct=True):
        return {"id": i, "sample": sample, "correct": correct, "agents": [{"agent": "A", "text": text}]}

    rows = [
        row("a", 0, "x = 2"),
        row("a", 1, "x =  2 "),
        row("a", 2, "x = 3"),
        row("b", 0, "x = 2"),
        row("b", 1, "y", False),
    ]
    kept, repeats = kept_trajectories(rows)
    assert [(r["id"], r["sample"]) for r in kept] == [("a", 0), ("a", 2), ("b", 0)] and repeats == 1


def test_resume_with_other_settings_is_refused(tiny_model_dir, tmp_path, monkeypatch, capsys):
    always_correct(monkeypatch, get_task("synthetic-arith"))
    out = tmp_path / "c"
    assert main(collect_args(tiny_model_dir, out, "--method", "single")) == 0
    assert main(collect_args(tiny_model_dir, out, "--method", "single", "--temperature", "0.9", "--resume")) == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and "temperature: 0.7 -> 0.9" in err
    assert main(collect_args(tiny_model_dir, out, "--method", "text_mas", "--resume")) == 1
    assert "method: 'single' -> 'text_mas'" in capsys.readouterr().err
    # More samples of the same teacher continue the run.
    assert main(collect_args(tiny_model_dir, out, "--method", "single", "--samples", "3", "--resume")) == 0
    assert len(lines(out / ATTEMPTS)) == 9


def test_diffmas_and_its_control_train_on_the_same_kept_targets(tiny_model_dir, tmp_path):
    task = get_task("synthetic-arith")
    examples = task.load(split="train", limit=6).examples
    rows = [
        {"id": ex.id, "sample": 0, "question": ex.question, "correct": True, "agents": [{"agent": "Solver", "text": t}]}
        for ex, t in zip(examples[:4], ["one \\boxed{1}", "two \\boxed{2}", "three", "four"])
    ]
    traj = write_trajectories(tmp_path / "traj", rows)  # a single-agent teacher's: other agents than diffmas's

    def items(method, **extra):
        cfg = TrainConfig(
            model=tiny_model_dir,
            dtype="float32",
            task="synthetic-arith",
            limit=6,
            method=method,
            lora_rank=4,
            trajectories=str(traj),
            target="trajectory",
            out=str(tmp_path / method),
            **extra,
        )
        return Trainer(cfg, progress=False).items

    diffmas, control = items("diffmas"), items("single_sft")
    assert [(i.id, i.target) for i in diffmas] == [(i.id, i.target) for i in control]
    assert [i.target for i in diffmas] == ["one \\boxed{1}", "two \\boxed{2}", "three", "four"]
    with pytest.raises(DataError, match="same --system"):  # the roles need the teacher's own agents
        items("diffmas", role_steps=1, max_steps=2)


def test_a_kept_set_without_the_datasets_fields_trains_from_the_tasks_data(tmp_path):
    """What an experiment commits (experiments/run.py): ids and texts, no question or gold."""
    task = get_task("synthetic-arith")
    examples = task.load(split="train", limit=2).examples
    rows = [{k: v for k, v in r.items() if k not in ("question", "gold")} for r in trajectory_rows(examples)]
    kept = load_trajectories(write_trajectories(tmp_path / "trajectories.jsonl", rows))
    items = build_items(task, examples, kept, "trajectory")
    assert [i.question for i in items] == [ex.question for ex in examples]
    assert [i.target for i in items] == [r["agents"][-1]["text"] for r in rows]
