"""Run directories cannot be mixed up: a resume with other settings, two writers, damaged adapters
and checkpoints, and bad input each stop with a message that says what to do, never a
traceback or a silent mix."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from diffmas import checkpoint as ckpt
from diffmas.cli import main
from diffmas.rundir import RunLock

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "configs" / "train-tiny.yaml")
pytestmark = pytest.mark.usefixtures("one_thread")


def eval_args(model_dir, out, *extra):
    return ["eval", "--model", model_dir, "--dtype", "float32", "--task", "synthetic-arith", "--limit", "4",
            "--batch-size", "2", "--max-new-tokens", "4", "--method", "single", "--out", str(out), *extra]  # fmt: skip


def train_args(model_dir, out, *extra):
    return ["train", "--config", TINY_CONFIG, "--model", model_dir, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A finished tiny single_sft run (two steps)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(train_args(tiny_model_dir, out, "--method", "single_sft", "--max-steps", "2")) == 0
    return out


@pytest.mark.parametrize(
    "change, named",
    [
        (["--method", "latent_mas", "--latent-steps", "1"], "method: 'single' -> 'latent_mas'"),
        (["--max-new-tokens", "5"], "max_new_tokens: 4 -> 5"),
        (["--limit", "3"], "smaller --limit (4 -> 3)"),
    ],
)
def test_eval_resume_with_other_settings_is_refused(tiny_model_dir, tmp_path, capsys, change, named):
    out = tmp_path / "ev"
    assert main(eval_args(tiny_model_dir, out)) == 0
    before = (out / "records.jsonl").read_text()
    capsys.readouterr()
    assert main(eval_args(tiny_model_dir, out, "--resume", *change)) == 1  # a later flag wins
    err = capsys.readouterr().err
    assert "cannot resume the evaluation" in err and named in err
    assert (out / "records.jsonl").read_text() == before
    # What may change on resume (where and how fast it runs) is accepted.
    assert main([*eval_args(tiny_model_dir, out, "--resume"), "--batch-size", "3"]) == 0


def test_eval_resume_with_retrained_adapters_in_the_same_folder_is_refused(tiny_model_dir, tmp_path, capsys):
    """A run retrained into the same folder is another system: its answers must not join the first's."""
    import shutil

    run, out = tmp_path / "run", tmp_path / "ev"
    single_sft = ["--method", "single_sft", "--max-steps", "2"]
    assert main(train_args(tiny_model_dir, run, *single_sft)) == 0
    adapter = ["--method", "single_sft", "--adapter", str(run), "--limit", "2"]
    assert main([*eval_args(tiny_model_dir, out), *adapter]) == 0
    assert main([*eval_args(tiny_model_dir, out, "--resume"), *adapter, "--limit", "3"]) == 0  # the same weights
    shutil.rmtree(run)
    assert main(train_args(tiny_model_dir, run, *single_sft, "--seed", "1")) == 0
    capsys.readouterr()
    assert main([*eval_args(tiny_model_dir, out, "--resume"), *adapter, "--limit", "4"]) == 1
    assert "adapter_weights" in capsys.readouterr().err
    assert len((out / "records.jsonl").read_text().splitlines()) == 3


def test_a_second_writer_on_the_same_run_is_refused(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    out.mkdir()
    with RunLock(out, "diffmas eval --method text_mas"):
        assert main(eval_args(tiny_model_dir, out)) == 1
        err = capsys.readouterr().err
        assert "in use by another process (diffmas eval --method text_mas, pid" in err
        assert not (out / "records.jsonl").exists()
    assert main(eval_args(tiny_model_dir, out)) == 0  # released: the next run goes ahead
    with RunLock(out, "diffmas eval"):
        assert main(train_args(tiny_model_dir, out, "--max-steps", "1")) == 1


def test_lock_is_dropped_when_its_holder_dies(tmp_path):
    import subprocess
    import sys

    code = (
        f"from diffmas.rundir import RunLock\nRunLock(__import__('pathlib').Path({str(tmp_path)!r}), 'x').acquire()\n"
    )
    subprocess.run([sys.executable, "-c", code + "import os\nos._exit(0)\n"], check=True)
    RunLock(tmp_path, "after").acquire().release()  # the dead holder's lock is gone


@pytest.mark.parametrize("damage", ["truncated", "same-size"])
def test_damaged_adapters_are_refused_at_evaluation(tiny_model_dir, trained, tmp_path, capsys, damage):
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(trained / "final", copy)
    weights = next(copy.rglob("adapter_model.safetensors"))
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-8] ^= 0x55
        weights.write_bytes(bytes(data))
    assert main(eval_args(tiny_model_dir, tmp_path / "ev", "--method", "single_sft", "--adapter", str(copy))) == 1
    err = capsys.readouterr().err
    assert "is damaged" in err and ("bytes" in err if damage == "truncated" else "hash" in err), err
    assert "Traceback" not in err


def test_train_resume_refuses_when_every_checkpoint_is_damaged(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, out, "--save-every", "1", "--keep-checkpoints", "0", "--max-steps", "2")
    assert main(args) == 0
    log = (out / "log.jsonl").read_text()
    for _, path in ckpt.complete_checkpoints(out):
        state = path / ckpt.STATE
        state.write_bytes(state.read_bytes()[:50])
    capsys.readouterr()
    with pytest.warns(UserWarning):
        assert main([*args, "--resume", "--max-steps", "3"]) == 1
    err = capsys.readouterr().err
    assert "every checkpoint" in err and "nothing to resume" in err
    assert (out / "log.jsonl").read_text() == log  # no steps 1.. appended to the old log


def test_a_manifest_without_its_step_is_not_a_checkpoint(trained, tmp_path, tiny_model_dir, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained / "final", copy)
    manifest = json.loads((copy / ckpt.MANIFEST).read_text())
    del manifest["step"]
    (copy / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert ckpt.complete_checkpoints(copy) == []
    assert main(eval_args(tiny_model_dir, tmp_path / "ev", "--method", "single_sft", "--adapter", str(copy))) == 1
    err = capsys.readouterr().err
    assert "no complete DiffMAS checkpoint" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--limit", "-1"], "limit must be at least 1, got -1"),
        (["--limit", "0"], "limit must be at least 1, got 0"),
        (["--offset", "100000"], "leaves no examples"),
    ],
)
def test_bad_selections_are_refused_before_anything_runs(tiny_model_dir, tmp_path, capsys, extra, message):
    args = eval_args(tiny_model_dir, tmp_path / "ev")
    i = args.index("--limit")
    del args[i : i + 2]
    assert main([*args, *extra]) == 1
    assert message in capsys.readouterr().err
    assert main(train_args(tiny_model_dir, tmp_path / "tr", *extra)) == 1
    assert message in capsys.readouterr().err


def test_a_bad_limit_in_yaml_is_refused(tiny_model_dir, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(Path(TINY_CONFIG).read_text().replace("limit: 32", "limit: -1"))
    assert main(["train", "--config", str(config), "--model", tiny_model_dir, "--out", str(tmp_path / "tr")]) == 1
    assert "limit must be at least 1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a machine without CUDA")
def test_device_cuda_without_cuda_is_refused(tiny_model_dir, tmp_path, capsys):
    assert main([*eval_args(tiny_model_dir, tmp_path / "ev"), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "--device cuda" in err and "use --device cpu" in err and "Traceback" not in err


def test_a_full_disk_and_a_read_only_output_get_messages(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import diffmas.evaluate

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(diffmas.evaluate, "write_atomically", full)
    assert main(eval_args(tiny_model_dir, tmp_path / "ev")) == 1
    err = capsys.readouterr().err
    assert "no space left on the disk while writing" in err and "--resume" in err
    monkeypatch.undo()

    real = Path.write_text

    def read_only(self, *args, **kwargs):
        if self.name == "train_config.json":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    assert main(train_args(tiny_model_dir, tmp_path / "tr", "--max-steps", "1")) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "Read-only file system" in err and "choose another --out" in err
