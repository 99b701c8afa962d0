"""`diffmas eval` / `run` / `models` end to end on a tiny model saved as a local directory."""

from __future__ import annotations

import json

import pytest

from diffmas.cli import main
from diffmas.records import wilson_interval


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def eval_args(model_dir, out, *extra):
    return [
        "eval",
        "--model",
        model_dir,
        "--dtype",
        "float32",
        "--task",
        "synthetic-arith",
        "--limit",
        "5",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "6",
        "--agent-max-new-tokens",
        "4",
        "--latent-steps",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def read(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["single", "text_mas", "latent_mas"])
def test_eval_writes_records_and_summary(model_dir, tmp_path, capsys, method):
    out = tmp_path / method
    assert main(eval_args(model_dir, out, "--method", method)) == 0
    records = read(out)
    assert len(records) == 5 and len({r["id"] for r in records}) == 5
    for key in ("id", "prediction", "gold", "correct", "generated_tokens", "latent_steps", "seconds"):
        assert key in records[0]
    assert all(r["latent_steps"] == (6 if method == "latent_mas" else 0) for r in records)
    # What passed between agents: text in text_mas (3 upstream agents, up to 4 tokens each),
    # latent vectors in latent_mas (3 upstream agents x 2 steps), nothing for one agent.
    for r in records:
        assert r["passed_latent_vectors"] == (6 if method == "latent_mas" else 0)
        assert (0 < r["passed_text_tokens"] <= 12) if method == "text_mas" else r["passed_text_tokens"] == 0
        assert r["peak_memory_mb"] > 0 and r["prompt_tokens"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 5 and summary["method"] == method
    assert summary["ci95"][0] <= summary["accuracy"] <= summary["ci95"][1]
    assert summary["peak_memory_mb"] > 0
    assert "| " + method in capsys.readouterr().out


def test_resume_skips_written_examples_without_duplicates(model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(eval_args(model_dir, out, "--method", "single")) == 0
    full = read(out)
    # Simulate a run killed after the first batch, with a torn last line.
    lines = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    assert main(eval_args(model_dir, out, "--method", "single")) == 1  # refuses to overwrite without --resume
    assert main(eval_args(model_dir, out, "--method", "single", "--resume")) == 0
    summary = json.loads((out / "summary.json").read_text())
    ids = [r["id"] for r in read_valid(out)]
    assert sorted(ids) == sorted(r["id"] for r in full) and summary["n"] == 5
    by_id = {r["id"]: r["prediction"] for r in full}
    assert all(by_id[r["id"]] == r["prediction"] for r in read_valid(out))


def test_rescore_rewrites_predictions_from_saved_outputs(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(eval_args(model_dir, out, "--method", "single")) == 0
    records = read(out)
    # Pretend the model had answered the first problem correctly and the second with no answer,
    # and that an older extractor had missed the first: rescoring must find both from the text.
    records[0]["output"] = f"So the total is \\boxed{{{records[0]['gold']}}}."
    records[0]["prediction"], records[0]["correct"] = None, False
    records[1]["output"] = "I do not know."
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["rescore", str(out)]) == 0
    after = read(out)
    assert [r["id"] for r in after] == [r["id"] for r in records]
    assert after[0]["prediction"] is not None and after[0]["correct"] is True
    assert after[1]["prediction"] is None and after[1]["correct"] is False
    summary = json.loads((out / "summary.json").read_text())
    assert summary["correct"] == sum(r["correct"] for r in after)
    assert summary["extraction_failures"] == sum(r["prediction"] is None for r in after)
    assert f"{records[0]['id']}: None -> " in capsys.readouterr().out


def test_rescore_refuses_a_directory_without_a_run(tmp_path, capsys):
    assert main(["rescore", str(tmp_path)]) == 1
    assert "not a finished evaluation run" in capsys.readouterr().err


def read_valid(out):
    rows = []
    for line in (out / "records.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--method", "telepathy"], "valid methods: diffmas, latent_mas, single, single_sft, text_mas"),
        (["eval", "--task", "gsm9k"], "did you mean 'gsm8k'"),
        (["eval", "--model", "no-such-model-xyz"], "qwen2.5-coder-0.5b-instruct"),
        (["eval", "--batch-size", "0"], "batch_size must be"),
    ],
)
def test_bad_names_give_a_clear_error_and_nonzero_exit(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(argv + ["--limit", "1"]) != 0
    assert message in capsys.readouterr().err


def test_unwritable_output_dir_is_reported(model_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(eval_args(model_dir, blocker / "sub", "--method", "single")) == 1
    assert "choose another --out" in capsys.readouterr().err


def test_run_shows_latent_readout(model_dir, capsys):
    argv = [
        "run",
        "--model",
        model_dir,
        "--dtype",
        "float32",
        "--question",
        "What is 2+3?",
        "--latent-steps",
        "2",
        "--max-new-tokens",
        "4",
        "--readout-k",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("2 latent steps") == 3 and "logit lens" in out and "answer:" in out


def test_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["eval", "--help"]) == 0


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and 0 < hi < 0.35
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9


def test_demo_trains_then_compares_every_method_and_resumes(model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--model",
        model_dir,
        "--dtype",
        "float32",
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--train-problems",
        "4",
        "--train-steps",
        "2",
        "--train-batch-size",
        "2",
        "--latent-steps",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "takes about" in text
    for method in ("single", "single_sft", "text_mas", "latent_mas", "diffmas"):
        assert f"| {method}" in text
        assert (out / method / "summary.json").is_file()
    for method in ("diffmas", "single_sft"):
        log = (out / f"train-{method}" / "log.jsonl").read_text().splitlines()
        assert len(log) == 2
    assert "faster than text_mas" in text and "its control single_sft" in text
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # A rerun trains nothing and re-evaluates nothing.
    assert main(args) == 0
    assert "using the finished training run" in capsys.readouterr().out
    for method in ("diffmas", "single_sft"):
        assert len((out / f"train-{method}" / "log.jsonl").read_text().splitlines()) == 2


def test_run_requires_a_question(capsys):
    assert main(["run"]) == 1
    assert "--question is required" in capsys.readouterr().err


def test_models_lists_every_offline_model_with_install_commands(capsys, tmp_path):
    assert main(["models", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct", "gemma-3-270m"):
        assert name in out
    assert "* qwen2.5-coder-0.5b-instruct" in out  # the default is marked
    assert main(["models", "install"]) == 2  # a name is required
    assert main(["models", "install", "qwen-9000"]) == 1
    assert "valid models" in capsys.readouterr().err


def test_tasks_lists_the_registry(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("gsm8k", "arc_easy", "arc_challenge", "synthetic-arith"):
        assert name in out


def test_samples_report_per_seed_accuracy_majority_and_agreement(model_dir, tmp_path, capsys):
    out = tmp_path / "k3"
    args = eval_args(model_dir, out, "--method", "single", "--samples", "3", "--temperature", "1.5")
    assert main(args) == 0
    assert "accuracy per seed" in capsys.readouterr().out
    records = read(out)
    assert sorted((r["id"], r["sample"]) for r in records) == sorted(
        (i, s) for i in {r["id"] for r in records} for s in range(3)
    )
    assert len(records) == 15
    outputs = {}
    for r in records:
        outputs.setdefault(r["id"], set()).add(r["output"])
    assert any(len(v) > 1 for v in outputs.values())  # the seeds really differ
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 5 and len(summary["stability"]["per_seed_accuracy"]) == 3
    # Killed after the first lines: resume completes each (problem, sample) exactly once.
    lines_ = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(lines_[:4]) + "\n")
    assert main([*args, "--resume"]) == 0
    assert sorted((r["id"], r["sample"]) for r in read(out)) == sorted((r["id"], r["sample"]) for r in records)
    assert main(eval_args(model_dir, tmp_path / "g", "--samples", "2")) == 1
    assert "greedy" in capsys.readouterr().err


def test_stability_statistics():
    from diffmas.records import stability

    rows = [
        ("a", 0, "1", True),
        ("a", 1, "1", True),
        ("a", 2, "2", False),
        ("b", 0, "5", False),
        ("b", 1, "6", False),
        ("b", 2, "7", True),
        ("c", 0, "3", True),
        ("c", 1, "3", True),
        ("c", 2, "3", True),
    ]
    records = [{"id": i, "sample": s, "prediction": p, "correct": c} for i, s, p, c in rows]
    st = stability(records, 3)
    assert st["per_seed_accuracy"] == [2 / 3, 2 / 3, 2 / 3] and st["std"] == 0
    assert st["majority_accuracy"] == 2 / 3  # a: "1" wins; b: a three-way tie goes to sample 0 ("5", wrong)
    assert st["agreement"] == 1 / 3


def test_answer_cue_answers_only_what_could_not_be_read(model_dir, tmp_path, capsys):
    """The tiny model's random text sometimes holds a number and sometimes not: the cued run keeps
    every readable answer as it was and continues each unreadable one with the task's cue."""
    bare, cued = tmp_path / "bare", tmp_path / "cued"
    assert main(eval_args(model_dir, bare, "--method", "single", "--limit", "8", "--no-answer-cue")) == 0
    assert main(eval_args(model_dir, cued, "--method", "single", "--limit", "8")) == 0
    before = {r["id"]: r for r in read(bare)}
    after = {r["id"]: r for r in read(cued)}
    assert not any(r["answer_cued"] for r in before.values())
    unread = [i for i, r in before.items() if r["prediction"] is None]
    assert unread and len(unread) < len(before), "choose a --limit with readable and unreadable answers"
    for i, r in after.items():
        assert r["answer_cued"] == (i in unread)
        if i in unread:
            assert r["output"].startswith(before[i]["output"])
            assert "Therefore, the final answer is \\boxed{" in r["output"]
            assert r["prompt_tokens"] > before[i]["prompt_tokens"]  # the cue is fed, not generated
        else:
            assert r["output"] == before[i]["output"] and r["prediction"] == before[i]["prediction"]
    summary = json.loads((cued / "summary.json").read_text())
    assert summary["answers_cued"] == len(unread)
    assert summary["cued_correct"] == sum(after[i]["correct"] for i in unread)
    assert json.loads((bare / "summary.json").read_text())["answers_cued"] == 0
    sampled = tmp_path / "sampled"
    assert (
        main(
            eval_args(
                model_dir, sampled, "--method", "single", "--limit", "8", "--samples", "2", "--temperature", "0.7"
            )
        )
        == 0
    )
    s = json.loads((sampled / "summary.json").read_text())
    first = [r for r in read(sampled) if r.get("sample", 0) == 0]
    assert s["answers"] == 16 and s["n"] == 8 and s["answers_cued"] == sum(r["answer_cued"] for r in first)
    assert s["cued_correct"] == sum(r["answer_cued"] and r["correct"] for r in first)


def test_answer_cue_of_each_task_family(tiny_qwen):
    from diffmas.engine import LM
    from diffmas.evaluate import answer_cue
    from diffmas.tasks import Example, get_task

    lm = LM(*tiny_qwen)
    mc = [
        Example("q1", "Which? A) x B) y C) z", "B", {"choices": ["x", "y", "z"]}),
        Example("q2", "Which? A) x B) y C) z D) w", "D", {"labels": ["A", "B", "C", "D"]}),
    ]
    cue = answer_cue(get_task("arc_challenge"), lm, lambda: mc)
    assert lm.decode_text(cue.ids).endswith("the letter of the correct option is \\boxed{")
    assert [lm.decode_text([t]) for t in cue.choices(0)] == ["A", "B", "C"]
    assert [lm.decode_text([t]) for t in cue.choices(1)] == ["A", "B", "C", "D"]
    assert lm.decode_text(cue.close_ids) == "}"
    assert cue.readable(1, "so it is \\boxed{D}") and not cue.readable(1, "Step 1: read the question")
    math = answer_cue(get_task("gsm8k"), lm, lambda: [Example("m", "1+1?", "2")])
    assert math.choices(0) is None and math.readable(0, "\\boxed{2}")
    assert answer_cue(get_task("mbpp"), lm, lambda: []) is None  # code: no cue


def test_messages_go_through_logging_quiet_by_default(capsys):
    import logging

    from diffmas import logs

    assert main(["tasks"]) == 0
    assert logging.getLogger("diffmas").level == logging.WARNING
    log = logging.getLogger("diffmas.test")
    log.info("hidden by default")
    log.warning("shown by default")
    assert main(["-v", "tasks"]) == 0 and logging.getLogger("diffmas").level == logging.INFO
    log.info("shown with -v")
    assert main(["tasks", "-vv"]) == 0 and logging.getLogger("diffmas").level == logging.DEBUG
    err = capsys.readouterr().err
    assert "warning: shown by default" in err and "info: shown with -v" in err and "hidden" not in err
    logs.configure(0)
