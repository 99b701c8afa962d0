"""The engine, the methods and training on a CUDA device, checked against the CPU.

Skipped where no GPU is present (CI has none); run them on a GPU machine with
``python -m pytest -q tests/test_cuda.py``. Float32 throughout, so that the CPU and GPU agree to
rounding; one bfloat16 test checks that the default dtype runs end to end.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from diffmas.agents import load_system
from diffmas.cli import main
from diffmas.engine import LM
from diffmas.latent import Realigner, run_latent_steps
from diffmas.methods import LatentMAS, MethodConfig, SingleAgent, TextMAS
from diffmas.models import build_tiny_model
from diffmas.train.config import TrainConfig
from diffmas.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is 2 + 3?",
    "Tom has 17 apples. He gives 5 to Ann. How many are left?",
    "x",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
]
METHODS = {"single": SingleAgent, "text_mas": TextMAS, "latent_mas": LatentMAS}


@pytest.fixture(scope="module")
def lms(tiny_qwen) -> tuple[LM, LM]:
    """The same tiny qwen2 (float32) on the CPU and on the GPU, TF32 off so that they agree."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, tokenizer = tiny_qwen
    return LM(model, tokenizer), LM(copy.deepcopy(model).to("cuda"), tokenizer)


def ids(lm: LM, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def test_trace_lives_on_the_gpu_and_matches_the_cpu(lms):
    states = []
    for lm in lms:
        prompts = [ids(lm, q) for q in QUESTIONS]
        cache = lm.new_cache(len(prompts))
        h = lm.prefill(cache, "A", prompts)
        h, _ = run_latent_steps(lm, cache, "A", h, 3, Realigner(lm))
        h = lm.prefill(cache, "B", prompts[::-1])
        width = max(map(len, prompts))
        assert len(cache) == cache.kv.get_seq_length() == 2 * width + 3
        assert [(s.agent, s.kind, len(s)) for s in cache.segments] == [
            ("A", "prompt", width),
            ("A", "latent", 3),
            ("B", "prompt", width),
        ]
        assert h.device.type == lm.device.type == cache.real_lengths().device.type
        states.append(h)
    torch.testing.assert_close(states[1].cpu(), states[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method_name", list(METHODS))
@torch.no_grad()
def test_greedy_answers_equal_the_cpus_and_ignore_batch_size(lms, method_name):
    cfg = MethodConfig(latent_steps=3, max_new_tokens=12, agent_max_new_tokens=6)
    cpu, gpu = (METHODS[method_name](lm, cfg, answer_format="Box it.", system=load_system("sequential")) for lm in lms)
    on_gpu = gpu.run(QUESTIONS)
    assert [t.final_text for t in on_gpu] == [t.final_text for t in cpu.run(QUESTIONS)]
    for q, t in zip(QUESTIONS, on_gpu):
        assert gpu.run([q])[0].final_text == t.final_text


@pytest.mark.parametrize("method_name", list(METHODS))
@torch.no_grad()
def test_sampling_runs_on_the_gpu_and_is_seeded(lms, method_name):
    cfg = MethodConfig(latent_steps=2, max_new_tokens=8, agent_max_new_tokens=4, temperature=0.8, top_p=0.9, seed=3)
    method = METHODS[method_name](lms[1], cfg, answer_format="x", system=load_system("sequential"))
    first, second = method.run(QUESTIONS[:2]), method.run(QUESTIONS[:2])
    assert [t.final_text for t in first] == [t.final_text for t in second]


@torch.no_grad()
def test_bfloat16_latent_mas_runs_on_the_gpu():
    model, tokenizer = build_tiny_model("qwen2", seed=0, dtype=torch.bfloat16)
    lm = LM(model.to("cuda"), tokenizer)
    method = LatentMAS(
        lm, MethodConfig(latent_steps=4, max_new_tokens=6), answer_format="Box it.", system=load_system("hierarchical")
    )
    traces = method.run(QUESTIONS)
    assert len(traces) == len(QUESTIONS) and all(t.generated_tokens > 0 for t in traces)


def train(model_dir: str, out: Path, device: str, **overrides) -> tuple[Trainer, dict]:
    cfg = TrainConfig(
        model=model_dir,
        device=device,
        dtype="float32",
        task="synthetic-arith",
        limit=16,
        topology="sequential",
        latent_steps=2,
        lora_rank=4,
        lora_dropout=0.0,
        lr=1e-3,
        batch_size=2,
        max_steps=3,
        save_every=1,
        comm_dropout=0.3,
        out=str(out),
        **overrides,
    )
    trainer = Trainer(cfg, progress=False)
    return trainer, trainer.train()


def losses(run: Path) -> torch.Tensor:
    return torch.tensor([json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()])


def test_training_on_the_gpu_follows_the_cpus_loss_curve(tiny_model_dir, tmp_path):
    gpu, gpu_summary = train(tiny_model_dir, tmp_path / "gpu", "cuda")
    assert next(gpu.lm.model.parameters()).device.type == "cuda"
    assert all(p.device.type == "cuda" and p.requires_grad for p in gpu.params)
    _, cpu_summary = train(tiny_model_dir, tmp_path / "cpu", "cpu")
    assert len(losses(tmp_path / "gpu")) == 3 and gpu_summary["steps"] == cpu_summary["steps"] == 3
    torch.testing.assert_close(losses(tmp_path / "gpu"), losses(tmp_path / "cpu"), atol=1e-4, rtol=1e-4)


def test_gpu_training_freezes_the_base_and_resumes(tiny_model_dir, tiny_qwen, tmp_path):
    trainer, _ = train(tiny_model_dir, tmp_path / "straight", "cuda")
    lora = {id(p) for p in trainer.params}
    reference = dict(tiny_qwen[0].named_parameters())  # the weights the directory was saved from
    for name, p in trainer.lm.model.named_parameters():
        if id(p) not in lora and name in reference:
            assert torch.equal(p.cpu(), reference[name]), name
    # A run stopped after its second step and resumed on the GPU logs the same losses.
    train(tiny_model_dir, tmp_path / "split", "cuda", until_step=2)
    train(tiny_model_dir, tmp_path / "split", "cuda", resume=True)
    torch.testing.assert_close(losses(tmp_path / "split"), losses(tmp_path / "straight"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_on_the_gpu_resumes_exactly(tiny_model_dir, tmp_path, precision):
    """accelerate's autocast (and, for fp16, its gradient scaler, checkpointed with the run)."""
    trainer, summary = train(tiny_model_dir, tmp_path / "straight", "cuda", mixed_precision=precision)
    assert summary["steps"] == 3 and all(p.dtype == torch.float32 for p in trainer.params)
    assert (trainer.dist.scaler is not None) == (precision == "fp16")
    train(tiny_model_dir, tmp_path / "split", "cuda", mixed_precision=precision, until_step=2)
    train(tiny_model_dir, tmp_path / "split", "cuda", mixed_precision=precision, resume=True)
    torch.testing.assert_close(losses(tmp_path / "split"), losses(tmp_path / "straight"), atol=0, rtol=0)


def cuda_syncs_of_a_step(model_dir: str, out: Path, latent_steps: int) -> int:
    """CUDA's own count of synchronising calls in one loss + backward (after a warm-up pass)."""
    import warnings

    cfg = TrainConfig(
        model=model_dir,
        device="cuda",
        dtype="float32",
        task="synthetic-arith",
        limit=8,
        topology="sequential",
        latent_steps=latent_steps,
        lora_rank=4,
        lora_dropout=0.0,
        batch_size=2,
        max_steps=2,
        out=str(out),
    )
    trainer = Trainer(cfg, progress=False)
    items = trainer.items[:2]
    trainer.loss(items).loss.backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.loss(items).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def test_a_training_step_does_not_synchronise_per_latent_step(tiny_model_dir, tmp_path):
    few = cuda_syncs_of_a_step(tiny_model_dir, tmp_path / "two", latent_steps=2)
    many = cuda_syncs_of_a_step(tiny_model_dir, tmp_path / "six", latent_steps=6)
    assert many == few


def test_cli_eval_and_train_on_the_gpu(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "train"
    assert (
        main(
            [
                "train",
                "--config",
                str(ROOT / "configs" / "train-tiny.yaml"),
                "--model",
                tiny_model_dir,
                "--device",
                "cuda",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    for method in ("latent_mas", "diffmas"):
        extra = ["--adapter", str(out / "final")] if method == "diffmas" else []
        run = tmp_path / method
        assert (
            main(
                [
                    "eval",
                    "--task",
                    "synthetic-arith",
                    "--limit",
                    "6",
                    "--model",
                    tiny_model_dir,
                    "--device",
                    "cuda",
                    "--method",
                    method,
                    "--latent-steps",
                    "2",
                    "--max-new-tokens",
                    "8",
                    "--out",
                    str(run),
                    *extra,
                ]
            )
            == 0
        )
        summary = json.loads((run / "summary.json").read_text())
        assert summary["n"] == 6 and summary["peak_memory_mb"] > 0
