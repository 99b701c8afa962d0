"""`diffmas train`, checkpoints, resuming, and evaluating trained adapters, on tiny model dirs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffmas import checkpoint as ckpt
from diffmas.cli import main
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.latent import SoftEmbedding
from diffmas.methods import SetupConfig
from diffmas.models import build_tiny_model, load_model
from diffmas.tasks import get_task
from diffmas.train.config import TrainConfig
from diffmas.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "configs" / "train-tiny.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


def save_tiny(path: Path, arch: str = "qwen2", seed: int = 0) -> str:
    model, tokenizer = build_tiny_model(arch, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-qwen"))


def train_args(model_dir, out, *extra) -> list[str]:
    return ["train", "--config", TINY_CONFIG, "--model", model_dir, "--out", str(out), *extra]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def curve(out: Path) -> list[tuple]:
    """The log without wall-clock times."""
    return [tuple(v for k, v in sorted(r.items()) if k != "seconds") for r in read_log(out)]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's adapters and comm adapter, by file and name."""
    out = {}
    for file in sorted(path.rglob("*.safetensors")):
        for name, t in load_file(str(file)).items():
            out[f"{file.relative_to(path)}:{name}"] = t
    return out


@pytest.fixture(scope="module")
def trained(model_dir, tmp_path_factory):
    """A diffmas run through the Python API (4 steps), with the weights before and after."""
    out = tmp_path_factory.mktemp("run") / "diffmas"
    cfg = TrainConfig(
        model=model_dir,
        dtype="float32",
        task="synthetic-arith",
        limit=32,
        topology="sequential",
        latent_steps=2,
        lora_rank=4,
        lora_dropout=0.0,
        lr=1e-3,
        batch_size=2,
        max_steps=4,
        save_every=2,
        out=str(out),
    )
    trainer = Trainer(cfg, progress=False)
    lora = {id(p) for p in trainer.params}
    base = {n: p.detach().clone() for n, p in trainer.lm.model.named_parameters() if id(p) not in lora}
    adapters = {a: [p.detach().clone() for p in trainer.adapters.parameters(a)] for a in trainer.adapters.names}
    comm = trainer.comm.weight.detach().clone()
    summary = trainer.train()
    return trainer, summary, base, adapters, comm


# -- training ---------------------------------------------------------------------------------------


def test_cli_train_writes_log_and_checkpoints(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(model_dir, out)) == 0
    assert "adapters:" in capsys.readouterr().out
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 and r["seconds"] > 0 for r in log)
    assert [r["latent_steps"] for r in log] == [1, 1, 2, 2]  # the curriculum [[0, 1], [2, 2]]
    assert log[0]["lr"] < log[1]["lr"] and log[3]["lr"] < log[1]["lr"]  # warm-up, then decay
    for path in (out / "checkpoints" / "step-0000002", out / "final"):
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["agents"] == ["Planner", "Critic", "Refiner", "Judger"]
        assert manifest["base_model"] == model_dir and manifest["method"] == "diffmas"
        for agent in manifest["agents"]:
            assert (path / "adapters" / agent / "adapter_model.safetensors").is_file()
            assert (path / "adapters" / agent / "adapter_config.json").is_file()
        for name in ("comm.safetensors", "trainer_state.pt", "rng-0.pt", "config.json"):
            assert (path / name).is_file(), name
    assert json.loads((out / "final" / "manifest.json").read_text())["step"] == 4
    assert main(train_args(model_dir, out)) == 1  # refuses to overwrite a run without --resume


def test_training_changes_every_adapter_and_not_the_base(trained):
    trainer, summary, base, adapters, comm = trained
    assert summary["steps"] == 4
    lora = {id(p) for p in trainer.params}
    for name, p in trainer.lm.model.named_parameters():
        if id(p) not in lora:
            assert torch.equal(p, base[name]), name
    for agent, before in adapters.items():
        after = list(trainer.adapters.parameters(agent))
        assert all(not torch.equal(a, b) for a, b in zip(after, before)), agent
    assert not torch.equal(trainer.comm.weight, comm)


def test_single_sft_trains_one_adapter(model_dir, tmp_path):
    out = tmp_path / "sft"
    assert main(train_args(model_dir, out, "--method", "single_sft", "--max-steps", "2")) == 0
    manifest = json.loads((out / "final" / "manifest.json").read_text())
    assert manifest["agents"] == ["Solver"] and manifest["system"] is None and not manifest["comm_adapter"]
    assert sorted(p.name for p in (out / "final" / "adapters").iterdir() if p.is_dir()) == ["Solver"]
    assert [r["latent_steps"] for r in read_log(out)] == [0, 0]
    lora_b = [t for k, t in tensors(out / "final").items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero


# -- resuming ---------------------------------------------------------------------------------------

RESUME_FLAGS = [
    "--max-steps",
    "6",
    "--save-every",
    "3",
    "--grad-accum",
    "2",
    "--lora-dropout",
    "0.1",
    "--comm-dropout",
    "0.3",
    "--curriculum",
    "0:1",
    "4:2",
    "--keep-checkpoints",
    "0",
]


def test_resume_continues_the_same_loss_curve(model_dir, tmp_path, monkeypatch):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(train_args(model_dir, straight, *RESUME_FLAGS)) == 0

    original = Trainer.train_step

    def crash_after_three(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_after_three)
    assert main(train_args(model_dir, split, *RESUME_FLAGS)) == 130
    monkeypatch.setattr(Trainer, "train_step", original)
    assert ckpt.latest_checkpoint(split).name == "step-0000003" and not (split / "final").exists()
    with open(split / "log.jsonl", "a") as fh:  # a step logged after the checkpoint, then lost
        fh.write(json.dumps({"step": 4, "loss": 0.0}) + "\n")
    assert main(train_args(model_dir, split, *RESUME_FLAGS, "--resume")) == 0

    assert curve(split) == curve(straight)
    assert len(curve(straight)) == 6
    a, b = tensors(straight / "final"), tensors(split / "final")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_interrupted_checkpoints_are_ignored(model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(model_dir, out)) == 0
    torn = out / "checkpoints" / "step-0000006"  # a write that died before its manifest
    shutil.copytree(out / "final", torn)
    (torn / "manifest.json").unlink()
    staging = out / "checkpoints" / ".tmp-step-0000008"
    shutil.copytree(out / "final", staging)
    assert ckpt.latest_checkpoint(out) == out / "final"
    with pytest.raises(DiffMASError, match="no complete DiffMAS checkpoint"):
        ckpt.resolve(torn)
    assert main(train_args(model_dir, out, "--resume", "--max-steps", "5")) == 0
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4, 5]
    assert not torn.exists() and not staging.exists()
    assert json.loads((out / "final" / "manifest.json").read_text())["step"] == 5


def test_resume_refuses_changed_settings(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(model_dir, out, "--max-steps", "2")) == 0
    assert main(train_args(model_dir, out, "--max-steps", "3", "--resume", "--lora-rank", "8")) == 1
    assert "lora_rank: 4 -> 8" in capsys.readouterr().err
    # A run saved before repeat_question was written stated the question in every prompt.
    for config in out.rglob("config.json"):
        saved = json.loads(config.read_text())
        del saved["repeat_question"]
        config.write_text(json.dumps(saved))
        manifest = json.loads((config.parent / "manifest.json").read_text())
        manifest["files"]["config.json"] = {"bytes": config.stat().st_size, "sha256": ckpt.sha256(config)}
        (config.parent / "manifest.json").write_text(json.dumps(manifest))
    assert main(train_args(model_dir, out, "--max-steps", "3", "--resume")) == 1
    assert "repeat_question: True -> False" in capsys.readouterr().err
    assert main(train_args(model_dir, out, "--max-steps", "3", "--resume", "--repeat-question")) == 0


# -- evaluating trained adapters ----------------------------------------------------------------------


def eval_args(model_dir, out, *extra) -> list[str]:
    return [
        "eval",
        "--model",
        model_dir,
        "--dtype",
        "float32",
        "--task",
        "synthetic-arith",
        "--limit",
        "3",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "5",
        "--latent-steps",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def test_eval_diffmas_loads_the_trained_weights(trained, model_dir, tmp_path):
    trainer, summary, *_ = trained
    assert main(eval_args(model_dir, tmp_path / "ev", "--method", "diffmas", "--adapter", summary["out"])) == 0
    records = [json.loads(line) for line in (tmp_path / "ev" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["latent_steps"] == 6 for r in records)
    lm = LM(*load_model(model_dir, dtype="float32"), name=model_dir)
    setup = SetupConfig(method="diffmas", model=model_dir, adapter=summary["final"], latent_steps=2)
    method = setup.build_method(lm, get_task("synthetic-arith"))
    assert [a.name for a in method.system.agents] == ["Planner", "Critic", "Refiner", "Judger"]
    for agent in trainer.adapters.names:
        for p, q in zip(method.adapters.parameters(agent), trainer.adapters.parameters(agent)):
            assert torch.equal(p, q)
    assert torch.equal(method.comm.weight, trainer.comm.weight)
    # With its adapters, the system answers differently from untrained latent MAS on the same trace.
    plain = SetupConfig(method="latent_mas", model=model_dir, latent_steps=2).build_method(
        LM(*load_model(model_dir, dtype="float32")), get_task("synthetic-arith")
    )
    with torch.no_grad():
        a = method.build_context(["What is 2 + 3?"]).last_hidden
        b = plain.build_context(["What is 2 + 3?"]).last_hidden
    assert not torch.allclose(a, b)


def test_question_stated_once_is_trained_recorded_and_checked(model_dir, tmp_path, capsys):
    """A run trained with --no-repeat-question records it; evaluating its adapters with the question
    repeated says that the prompts differ from training, and with the flag it does not."""
    run = tmp_path / "once"
    assert main(train_args(model_dir, run, "--max-steps", "1", "--no-repeat-question")) == 0
    assert json.loads((run / "final" / "manifest.json").read_text())["repeat_question"] is False
    capsys.readouterr()
    for repeat in (True, False):
        setup = SetupConfig(method="diffmas", model=model_dir, adapter=str(run / "final"), repeat_question=repeat)
        setup.build_method(LM(*load_model(model_dir, dtype="float32"), name=model_dir), get_task("synthetic-arith"))
        noted = "was trained with --no-repeat-question" in capsys.readouterr().err
        assert noted == repeat
    trainer = Trainer(
        TrainConfig(
            model=model_dir,
            dtype="float32",
            task="synthetic-arith",
            limit=4,
            max_steps=1,
            topology="sequential",
            repeat_question=False,
            out=str(tmp_path / "t"),
        ),
        progress=False,
    )
    assert trainer.method.config.repeat_question is False  # the trained trajectories state it once


def test_diffmas_prompts_default_to_those_it_was_trained_with(model_dir, tmp_path, capsys):
    """Without --repeat-question / --no-repeat-question, diffmas states the question as its adapters
    were trained (here: in every prompt), while latent_mas keeps stating it once."""
    run = tmp_path / "repeat"
    assert main(train_args(model_dir, run, "--max-steps", "1", "--repeat-question")) == 0
    capsys.readouterr()
    lm = LM(*load_model(model_dir, dtype="float32"), name=model_dir)
    method = SetupConfig(method="diffmas", model=model_dir, adapter=str(run / "final")).build_method(
        lm, get_task("synthetic-arith")
    )
    assert method.config.repeat_question is True
    assert "prompts they were not trained on" not in capsys.readouterr().err
    out = tmp_path / "ev"
    assert main(eval_args(model_dir, out, "--method", "diffmas", "--adapter", str(run / "final"))) == 0
    assert json.loads((out / "summary.json").read_text())["config"]["repeat_question"] is True  # as resolved
    fresh = LM(*load_model(model_dir, dtype="float32"), name=model_dir)
    plain = SetupConfig(method="latent_mas", model=model_dir).build_method(fresh, get_task("synthetic-arith"))
    assert not plain.config.repeat_question


def test_soft_latent_input_is_trained_recorded_and_used_at_evaluation(model_dir, tmp_path, capsys):
    """A reader run on soft latent inputs records them; diffmas then runs them without being told,
    and says so when told otherwise."""
    run = tmp_path / "soft"
    flags = ("--max-steps", "1", "--latent-input", "soft", "--soft-temperature", "0.5", "--no-comm-adapter")
    assert main(train_args(model_dir, run, *flags, "--grad-through", "none")) == 0
    manifest = json.loads((run / "final" / "manifest.json").read_text())
    assert (manifest["latent_input"], manifest["soft_temperature"], manifest["comm_adapter"]) == ("soft", 0.5, False)
    capsys.readouterr()
    lm = LM(*load_model(model_dir, dtype="float32"), name=model_dir)
    method = SetupConfig(method="diffmas", model=model_dir, adapter=str(run / "final")).build_method(
        lm, get_task("synthetic-arith")
    )
    assert isinstance(method.latent_map, SoftEmbedding) and method.latent_map.temperature == 0.5
    assert "trained with" not in capsys.readouterr().err
    fresh = LM(*load_model(model_dir, dtype="float32"), name=model_dir)
    SetupConfig(method="diffmas", model=model_dir, adapter=str(run / "final"), latent_input="hidden").build_method(
        fresh, get_task("synthetic-arith")
    )
    assert "trained with --latent-input soft; running with hidden" in capsys.readouterr().err


def test_a_trained_communication_adapter_is_not_bypassed_by_soft_inputs(trained, model_dir):
    lm = LM(*load_model(model_dir, dtype="float32"), name=model_dir)
    setup = SetupConfig(method="diffmas", model=model_dir, adapter=str(trained[1]["out"]), latent_input="soft")
    with pytest.raises(DiffMASError, match="communication adapter"):
        setup.build_method(lm, get_task("synthetic-arith"))


def test_soft_latent_input_refuses_a_communication_adapter():
    with pytest.raises(DiffMASError, match="--no-comm-adapter"):
        TrainConfig(latent_input="soft", comm_adapter=True)
    with pytest.raises(DiffMASError, match="soft_temperature"):
        TrainConfig(latent_input="soft", comm_adapter=False, soft_temperature=0)
    TrainConfig(latent_input="soft", comm_adapter=False)
    TrainConfig(method="single_sft", latent_input="soft")  # no latent steps: nothing to refuse


def test_eval_single_sft(model_dir, tmp_path):
    run = tmp_path / "sft"
    assert main(train_args(model_dir, run, "--method", "single_sft", "--max-steps", "1")) == 0
    out = tmp_path / "ev"
    assert main(eval_args(model_dir, out, "--method", "single_sft", "--adapter", str(run / "final"))) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["method"] == "single_sft"


def test_adapter_errors(trained, model_dir, tmp_path, capsys):
    run = trained[1]["out"]
    llama = save_tiny(tmp_path / "llama", "llama")
    other_qwen = save_tiny(tmp_path / "qwen-seed1", "qwen2", seed=1)  # same shapes, other weights
    for other in (llama, other_qwen):
        assert main(eval_args(other, tmp_path / "a", "--method", "diffmas", "--adapter", run, "--resume")) == 1
        err = capsys.readouterr().err
        assert f"trained on base model {model_dir!r}" in err and f"model loaded is {other!r}" in err
    cases = [
        (["--method", "diffmas"], "pass --adapter"),
        (["--method", "latent_mas", "--adapter", run], "takes no --adapter"),
        (["--method", "single_sft", "--adapter", run], "trained with method 'diffmas'"),
        (["--method", "diffmas", "--adapter", run, "--topology", "hierarchical"], "trained for agents"),
        (["--method", "diffmas", "--adapter", str(tmp_path)], "no complete DiffMAS checkpoint"),
    ]
    for extra, message in cases:
        assert main(eval_args(model_dir, tmp_path / "b", *extra, "--resume")) == 1
        assert message in capsys.readouterr().err, extra


# -- configuration --------------------------------------------------------------------------------------


def test_unknown_yaml_key_is_named(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("task: synthetic-arith\nlora_rnak: 4\n")
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'lora_rnak'" in err and "lora_rank" in err


def test_config_values_are_validated():
    cfg = TrainConfig(curriculum=["0:2", "100:5", "200:10"])
    assert cfg.curriculum == [[0, 2], [100, 5], [200, 10]]
    assert [cfg.latent_steps_at(s) for s in (0, 99, 100, 250)] == [2, 2, 5, 10]
    ramp = TrainConfig(latent_steps=10, ramp_steps=10, ramp_start=2)
    assert [ramp.latent_steps_at(s) for s in (0, 5, 10, 50)] == [2, 6, 10, 10]
    sched = TrainConfig(warmup_steps=2, schedule="linear", min_lr_ratio=0.0)
    assert [round(sched.lr_factor(s, 6), 3) for s in range(6)] == [0.333, 0.667, 1.0, 0.75, 0.5, 0.25]
    assert TrainConfig(curriculum=[[5, 3], [0, 1]]).curriculum == [[0, 1], [5, 3]]
    for bad in (
        dict(curriculum=["0-2"]),
        dict(curriculum=["0:2"], ramp_steps=3),
        dict(method="sft"),
        dict(batch_size=0),
        dict(grad_through="half"),
        dict(comm_lr=0.0),
    ):
        with pytest.raises(DiffMASError):
            TrainConfig(**bad)


def test_exclude_last_holds_out_the_end(model_dir, tmp_path):
    from diffmas.train.data import load_examples

    task = get_task("synthetic-arith")
    full = task.load(split="train").examples
    kept, _ = load_examples(task, "train", None, exclude_last=500)
    assert [e.id for e in kept] == [e.id for e in full[:-500]]
    window, _ = load_examples(task, "train", None, exclude_last=500, offset=10, limit=5)
    assert [e.id for e in window] == [e.id for e in full[10:15]]


def test_training_targets_end_in_the_gold_answer():
    task = get_task("synthetic-arith")
    for ex in task.load(split="train", limit=5).examples:
        target = task.training_target(ex)
        assert target.startswith(ex.meta["solution"]) and target.endswith(f"\\boxed{{{ex.gold}}}.")
        assert task.score(target, ex) == (ex.gold, True)
    gsm8k = get_task("gsm8k")
    row = {"question": "Q?", "answer": "She sold 48/2 = <<48/2=24>>24 clips.\n#### 24"}
    ex = gsm8k.parse_row(row, 0, "train", 0)
    assert gsm8k.training_target(ex) == "She sold 48/2 = 24 clips.\n\nThe final answer is \\boxed{24}."


def test_python_dash_m_train_help():
    proc = subprocess.run(
        [sys.executable, "-m", "diffmas", "train", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0 and "--grad-through" in proc.stdout and "--resume" in proc.stdout


def test_until_step_stops_early_and_resume_finishes_the_same_run(model_dir, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(train_args(model_dir, straight, "--max-steps", "5")) == 0
    assert main(train_args(model_dir, split, "--max-steps", "5", "--until-step", "3")) == 0
    assert "stopped at step 3 of 5" in capsys.readouterr().out
    assert not (split / "final").exists() and ckpt.latest_checkpoint(split).name == "step-0000003"
    assert [r["lr"] for r in read_log(split)] == [r["lr"] for r in read_log(straight)][:3]  # the 5-step schedule
    assert main(train_args(model_dir, split, "--max-steps", "5", "--resume")) == 0
    assert curve(split) == curve(straight)


def test_one_model_evaluates_a_checkpoint_batch_by_batch(trained, model_dir, tmp_path):
    from diffmas.evaluate import EvalConfig, evaluate

    _, summary, *_ = trained
    lm = LM(*load_model(model_dir, dtype="float32"), name=model_dir)
    base = EvalConfig(
        model=model_dir,
        dtype="float32",
        task="synthetic-arith",
        batch_size=2,
        max_new_tokens=4,
        latent_steps=2,
        method="diffmas",
        adapter=summary["out"],
        out=str(tmp_path / "ev"),
        resume=True,
    )
    for limit in (2, 4):  # one call per batch, as benchmarks/gsm8k_methods.py does
        result = evaluate(replace(base, limit=limit), lm=lm, progress=False)
    assert result["n"] == 4
    other = tmp_path / "other"
    shutil.copytree(Path(summary["out"]) / "final", other)
    with pytest.raises(DiffMASError, match="fresh copy"):
        evaluate(replace(base, adapter=str(other), out=str(tmp_path / "ev2")), lm=lm, progress=False)


def test_report_to_tensorboard_logs_every_step(model_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="the tracking extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(train_args(model_dir, out, "--max-steps", "3", "--report-to", "tensorboard")) == 0
    events = list((out / "trackers").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under <out>/trackers"
    scalars = []
    for file in events:
        acc = EventAccumulator(str(file))
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            scalars = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    logged = [(r["step"], r["loss"]) for r in read_log(out)]
    assert [s for s, _ in scalars] == [s for s, _ in logged] == [1, 2, 3]
    assert [v for _, v in scalars] == pytest.approx([v for _, v in logged], rel=1e-6)


def test_report_to_names_what_is_missing(model_dir, tmp_path, capsys):
    assert main(train_args(model_dir, tmp_path / "a", "--report-to", "tensorbord")) == 1
    assert "unknown trackers ['tensorbord']" in capsys.readouterr().err
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert main(train_args(model_dir, tmp_path / "b", "--max-steps", "1", "--report-to", "wandb")) == 1
        assert "needs the wandb package" in capsys.readouterr().err
