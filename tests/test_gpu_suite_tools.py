"""The GPU suite's tools on the CPU, tiny model: benchmarks/random_model.py writes a weightless spec
and builds a loadable random model from it; benchmarks/eval_throughput.py's anchor row answers the
same prompts as diffmas's single agent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_spec_has_no_weights_and_builds_the_same_architecture_with_seeded_weights(tiny_model_dir, tmp_path):
    random_model = _script("random_model")
    assert random_model.main(["spec", tiny_model_dir, str(tmp_path / "spec")]) == 0
    files = {p.name for p in (tmp_path / "spec").iterdir()}
    assert "config.json" in files and "tokenizer.json" in files
    assert not any(name.endswith((".safetensors", ".bin")) for name in files)
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        argv = ["build", str(tmp_path / "spec"), str(tmp_path / name), "--dtype", "float32", "--seed", seed]
        assert random_model.main(argv) == 0
    original = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    built = json.loads((tmp_path / "a" / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert built[key] == original[key]
    a, b, c = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b", "c"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a[name], b[name])  # the same seed, the same weights
    assert not torch.equal(a[name], c[name])


def test_a_spec_needs_a_model_directory(tmp_path):
    random_model = _script("random_model")
    (tmp_path / "empty").mkdir()
    try:
        random_model.main(["spec", str(tmp_path / "empty"), str(tmp_path / "out")])
    except SystemExit as exc:
        assert "no config.json" in str(exc)
    else:
        raise AssertionError("a folder without config.json was taken for a model")


def test_the_generate_anchor_answers_single_agents_prompts(tiny_model_dir, tmp_path, capsys):
    eval_throughput = _script("eval_throughput")
    out = tmp_path / "eval.json"
    argv = ["--model", tiny_model_dir, "--dtype", "float32", "--task", "synthetic-arith", "--split", "test"]
    argv += ["--problems", "4", "--batch-size", "2", "--max-new-tokens", "6", "--agent-max-new-tokens", "3"]
    argv += ["--latent-steps", "1", "--out", str(out)]
    assert eval_throughput.main(argv) == 0
    result = json.loads(out.read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"generate", "single", "latent_mas", "text_mas"}
    assert rows["single"]["same_as_generate"] == 1.0  # greedy, float32, the same prompts
    assert rows["generate"]["generated_tokens"] == rows["single"]["generated_tokens"]
    assert all(r["problems"] == 4 and r["seconds"] > 0 for r in rows.values())
    assert result["single_speedup_vs_generate"] > 0 and "latent_mas_speedup_vs_text_mas" in result
    assert "single_speedup_vs_generate" in capsys.readouterr().out
