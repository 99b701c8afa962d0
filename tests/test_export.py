"""Portable adapters: the hub id in adapter configs, settings carried to evaluation, the export
folder (PEFT-loadable, a filled model card, no resume state) and sharing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffmas.checkpoint import hub_id_of, trained_base_model
from diffmas.cli import main
from diffmas.models import build_tiny_model
from diffmas.train import TrainConfig, train
from diffmas.train import export as export_mod

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny diffmas run trained with 3 latent steps per agent (the default is 10)."""
    root = tmp_path_factory.mktemp("export")
    model, tokenizer = build_tiny_model("qwen2", seed=0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    cfg = TrainConfig(
        model=str(root / "model"),
        dtype="float32",
        task="synthetic-arith",
        limit=8,
        topology="sequential",
        latent_steps=3,
        lora_rank=4,
        lora_dropout=0.0,
        lr=1e-3,
        batch_size=2,
        max_steps=2,
        out=str(root / "run"),
    )
    train(cfg, progress=False)
    return root


def test_hub_ids():
    assert hub_id_of("qwen2.5-coder-0.5b-instruct") == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert hub_id_of("someone/some-model") == "someone/some-model"
    assert hub_id_of("/a/local/dir") is None and hub_id_of("./model") is None
    manifest = {"base_model": "/gone/cache/path", "base_model_hub_id": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}
    assert trained_base_model(manifest) == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert trained_base_model({"base_model": "qwen2.5-coder-1.5b-instruct"}) == "qwen2.5-coder-1.5b-instruct"


def test_export_is_small_loadable_and_carries_the_trained_settings(run, tmp_path, capsys):
    final = run / "run" / "final"
    assert (final / "trainer_state.pt").is_file()
    ev = tmp_path / "ev"
    assert main(["eval", "--method", "single", "--model", str(run / "model"), "--dtype", "float32",
                 "--task", "synthetic-arith", "--limit", "2", "--max-new-tokens", "4", "--out", str(ev)]) == 0  # fmt: skip
    out = tmp_path / "exported"
    assert main(["export", str(run / "run"), "--out", str(out), "--results", str(ev)]) == 0
    assert "exported" in capsys.readouterr().out
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert not any(n.endswith(".pt") for n in names)  # no optimizer, scheduler or RNG state
    assert {"manifest.json", "README.md", "config.json", "train_config.yaml", "comm.safetensors"} <= names
    card = (out / "README.md").read_text()
    assert "base_model:" in card and "latent steps per upstream agent: 3" in card and "synthetic-arith" in card
    assert "| single | synthetic-arith | default | 2 |" in card
    judger_card = (out / "adapters" / "Judger" / "README.md").read_text()
    assert "Judger" in judger_card and "[More Information Needed]" not in judger_card
    config = json.loads((out / "adapters" / "Judger" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run / "model")  # a local model has no hub id

    # Evaluated with neither --model nor --latent-steps: the trained base model and 3 steps.
    res = tmp_path / "res"
    argv = ["eval", "--method", "diffmas", "--adapter", str(out), "--dtype", "float32", "--task", "synthetic-arith",
            "--limit", "2", "--max-new-tokens", "4", "--out", str(res)]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (res / "records.jsonl").read_text().splitlines()]
    assert all(r["latent_steps"] == 3 * 3 for r in records)
    assert "trained with" not in capsys.readouterr().err  # nothing differs, nothing to note

    # A changed file is refused, not loaded.
    weights = out / "adapters" / "Planner" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert main([*argv[:-1], str(tmp_path / "res2")]) == 1
    assert "damaged" in capsys.readouterr().err


def test_peft_and_the_comm_map_load_the_export(run, tmp_path):
    from peft import PeftModel

    from diffmas.engine import LM
    from diffmas.models import load_model

    out = export_mod.export(run / "run", tmp_path / "e")
    base, _ = build_tiny_model("qwen2", seed=0)
    peft_model = PeftModel.from_pretrained(base, str(out / "adapters" / "Judger"), adapter_name="Judger")
    saved = load_file(str(out / "adapters" / "Judger" / "adapter_model.safetensors"))
    loaded = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) > 0
    for name, tensor in saved.items():
        match = [
            p for n, p in loaded.items() if n.replace(".Judger", "").endswith(name.removeprefix("base_model.model."))
        ]
        assert match and torch.equal(match[0].detach(), tensor)
    lm = LM(*load_model(str(run / "model"), dtype="float32"))
    comm = export_mod.load_comm(out, lm)
    assert torch.equal(comm.weight.detach(), load_file(str(out / "comm.safetensors"))["weight"])
    with pytest.raises(Exception, match="not empty"):
        export_mod.export(run / "run", out)


def test_push_uploads_the_folder(run, tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw["private"]))

        def upload_folder(self, folder_path, repo_id, repo_type):
            calls.append(("upload", sorted(p.name for p in Path(folder_path).iterdir()), repo_id, repo_type))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = export_mod.export(run / "run", tmp_path / "e")
    assert export_mod.push_to_hub(out, "me/tiny", private=True) == "https://huggingface.co/me/tiny"
    assert calls[1] == ("create", "me/tiny", True)
    assert calls[2][0] == "upload" and "manifest.json" in calls[2][1] and calls[2][2:] == ("me/tiny", "model")
    with pytest.raises(Exception, match="not an export"):
        export_mod.push_to_hub(tmp_path, "me/tiny")
