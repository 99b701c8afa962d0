"""The lm-evaluation-harness adapter, offline, on a local generative task and a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (the test extra)")

from diffmas.agents import load_system  # noqa: E402
from diffmas.engine import LM  # noqa: E402
from diffmas.errors import DiffMASError  # noqa: E402
from diffmas.lm_eval_adapter import DiffMASHarnessLM, cut, fold_messages  # noqa: E402
from diffmas.methods import LatentMAS, MethodConfig  # noqa: E402
from diffmas.models import load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = """task: diffmas_local_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n", "Question:"]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
"""
DOCS = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"}, {"question": "3+1?", "answer": "4"}]


def test_local_generative_task_runs_through_a_latent_system(tiny_model_dir, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "task.yaml").write_text(TASK.format(data=data))
    model_args = f"model={tiny_model_dir},dtype=float32,method=latent_mas,latent_steps=2,batch_size=2"
    results = lm_eval.simple_evaluate(
        model="diffmas",
        model_args=model_args,
        tasks=["diffmas_local_arith"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        log_samples=True,
    )
    assert results["results"]["diffmas_local_arith"]["exact_match,none"] == 0.0  # a random tiny model
    samples = results["samples"]["diffmas_local_arith"]
    assert len(samples) == 3
    # Each response is what the latent system writes for lm_eval's prompt, cut at a stop string.
    lm = LM(*load_model(tiny_model_dir, dtype="float32"))
    method = LatentMAS(
        lm,
        MethodConfig(latent_steps=2, max_new_tokens=6),
        answer_format="End with the final answer on its own line.",
        system=load_system(None, None),
    )
    prompts = [f"Question: {d['question']}\nAnswer:" for d in DOCS]
    with torch.inference_mode():
        expected = [cut(t.final_text, ["\n\n", "Question:"]) for t in method.run(prompts)]
    by_doc = {s["doc"]["question"]: s["resps"][0][0] for s in samples}
    assert [by_doc[d["question"]] for d in DOCS] == expected


def test_adapter_errors_and_stop_strings(tiny_model_dir):
    assert cut("12\n\nQuestion: next", ["\n\n", "Question:"]) == "12"
    assert cut("no stop here", []) == "no stop here"
    with pytest.raises(DiffMASError, match="unknown model_args"):
        DiffMASHarnessLM(model=tiny_model_dir, latent_step=3)
    assert fold_messages([{"role": "user", "content": "q"}]) == "q"
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+2?"},
    ]
    assert fold_messages(history) == "Be brief.\n\nUser: 1+1?\n\nAssistant: 2\n\n2+2?"


MC_TASK = """task: diffmas_local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""
MC_DOCS = [
    {"question": "1+1?", "choices": ["2", "3", "11"], "label": 0},
    {"question": "Sky colour?", "choices": ["blue", "green"], "label": 0},
]


@pytest.mark.parametrize("method", ["single", "latent_mas"])
def test_local_multiple_choice_task_scores_each_option_on_the_trace(tiny_model_dir, tmp_path, monkeypatch, method):
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mc.yaml").write_text(MC_TASK.format(data=data))
    model = DiffMASHarnessLM(model=tiny_model_dir, dtype="float32", method=method, latent_steps=2, batch_size=1)
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=["diffmas_local_choice"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        log_samples=True,
    )
    assert 0.0 <= results["results"]["diffmas_local_choice"]["acc,none"] <= 1.0
    samples = {s["doc"]["question"]: s for s in results["samples"]["diffmas_local_choice"]}
    # Each option's log-likelihood is what the final agent gives it on top of the method's trace.
    for doc in MC_DOCS:
        prompt = f"Question: {doc['question']}\nAnswer:"
        with torch.inference_mode():
            expected = model.method.score([prompt] * len(doc["choices"]), [" " + c for c in doc["choices"]])
        got = [r[0] for r in samples[doc["question"]]["resps"]]
        assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-4)
        assert all(lp < 0 for lp, _ in expected)


def test_rolling_likelihood_sums_its_windows(tiny_model_dir, monkeypatch):
    from types import SimpleNamespace

    model = DiffMASHarnessLM(model=tiny_model_dir, dtype="float32", method="single")
    text = "one two three four five six seven eight nine ten"
    ids = model.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    (whole,) = model.loglikelihood_rolling([SimpleNamespace(args=(text,))], disable_tqdm=True)
    with torch.inference_mode():
        assert whole == pytest.approx(model.method.score([""], [ids])[0][0], abs=1e-4)
    # A text longer than the room the context leaves is read in windows whose sums add up.
    room = 4
    monkeypatch.setattr(type(model), "_empty_context_length", lambda self: self.lm.max_positions - room)
    (windowed,) = model.loglikelihood_rolling([SimpleNamespace(args=(text,))], disable_tqdm=True)
    with torch.inference_mode():
        parts = [model.method.score([""], [ids[i : i + room]])[0][0] for i in range(0, len(ids), room)]
    assert windowed == pytest.approx(sum(parts), abs=1e-4)
    assert windowed != pytest.approx(whole, abs=1e-3)


def test_lm_eval_command_line_with_the_model_registered(tiny_model_dir, tmp_path):
    """lm_eval's own command line (its --batch_size, its default --device cuda on a CPU machine)."""
    import os
    import subprocess
    import sys

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "task.yaml").write_text(TASK.format(data=data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "diffmas",
        "lm-eval",
        "--model",
        "diffmas",
        "--model_args",
        f"model={tiny_model_dir},dtype=float32,method=text_mas,max_new_tokens=6,agent_max_new_tokens=4",
        "--batch_size",
        "2",
        "--tasks",
        "diffmas_local_arith",
        "--include_path",
        str(tmp_path / "tasks"),
        "--apply_chat_template",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "diffmas_local_arith" in proc.stdout and "exact_match" in proc.stdout
