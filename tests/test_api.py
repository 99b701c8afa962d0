"""`import diffmas`: the few-lines API answers exactly as `diffmas eval` does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import diffmas
from diffmas.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"dtype": "bfloat16", "max_new_tokens": 12, "agent_max_new_tokens": 6, "latent_steps": 2, "batch_size": 3}


@pytest.mark.parametrize("method", ["latent_mas", "text_mas"])
def test_pipeline_gives_the_command_lines_answers_in_bfloat16(tiny_model_dir, tmp_path, method):
    argv = ["eval", "--model", tiny_model_dir, "--task", "synthetic-arith", "--limit", "7", "--method", method]
    for key, value in SETTINGS.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    records = [json.loads(line) for line in (tmp_path / "cli" / "records.jsonl").read_text().splitlines()]

    system = diffmas.pipeline(method, model=tiny_model_dir, task="synthetic-arith", **SETTINGS)
    examples = diffmas.get_task("synthetic-arith").load(split="test", limit=7).examples
    assert not torch.is_inference_mode_enabled()  # the system enters inference mode itself
    answers = system([ex.question for ex in examples])
    by_id = {r["id"]: r for r in records}
    assert [a.text for a in answers] == [by_id[ex.id]["output"] for ex in examples]
    assert [a.prediction for a in answers] == [by_id[ex.id]["prediction"] for ex in examples]
    one = system(examples[0].question)
    assert isinstance(one, diffmas.Answer) and one.text == answers[0].text
    assert one.trace.latent_steps == (2 * 3 if method == "latent_mas" else 0)  # sequential: 3 upstream agents

    summary = system.evaluate(limit=7, out=str(tmp_path / "api"))
    assert (
        summary["n"] == 7
        and summary["accuracy"] == json.loads((tmp_path / "cli" / "summary.json").read_text())["accuracy"]
    )
    with pytest.raises(TypeError, match="loaded model"):
        system.evaluate(dtype="float32")


def test_load_and_a_system_on_a_loaded_model(tiny_model_dir):
    lm = diffmas.load(tiny_model_dir, dtype="float32")
    system = diffmas.pipeline("single", model=lm, task="gsm8k", max_new_tokens=4)
    assert system.lm is lm and system.config.dtype == "float32"
    assert isinstance(system(["1+1?", "2+2?"])[1].text, str)
    with pytest.raises(diffmas.DiffMASError, match="latent_step"):
        diffmas.pipeline("latent_mas", model=lm, latent_step=3)
    # A method built by hand takes its answer format from its family.
    method = diffmas.build_method("single", lm, diffmas.MethodConfig(), diffmas.get_task("arc_easy"))
    assert "letter" in method.answer_format


def test_import_diffmas_is_light():
    code = "import sys, diffmas; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "pipeline" in dir(diffmas)
    with pytest.raises(AttributeError, match="no attribute"):
        diffmas.nothing_here  # noqa: B018
