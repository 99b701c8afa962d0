"""``diffmas run``: answer one question and show what every agent passed on."""

from __future__ import annotations

from dataclasses import dataclass

from diffmas.cli._common import parse_config, quiet_transformers
from diffmas.config import option
from diffmas.engine import LM
from diffmas.evaluate import build_method
from diffmas.methods import MethodConfig, Trace
from diffmas.tasks import get_task


@dataclass
class RunConfig(MethodConfig):
    question: str = option("", "the question to answer")
    method: str = option("latent_mas", "single | text_mas | latent_mas")
    model: str = option("qwen2.5-coder-0.5b-instruct", "registry name, Hugging Face id or local directory")
    task: str = option("gsm8k", "task whose prompts and answer format to use (math, multiple choice...)")
    dtype: str = option("bfloat16", "bfloat16 | float32 | float16 | auto")
    device: str = option("cpu", "torch device")
    cache_dir: str | None = option(None, "where de-quantised offline models are cached")
    system: str | None = option(None, "built-in system name or YAML file defining the agents")
    topology: str | None = option(None, "sequential | hierarchical")
    readout_k: int = option(3, "logit-lens tokens shown per latent vector")


def format_trace(trace: Trace, prediction: str | None) -> str:
    lines = []
    for a in trace.agents:
        lines.append(f"== {a.agent} ({a.role}) - {a.prompt_tokens} prompt tokens")
        if a.latent_steps:
            lines.append(f"   {a.latent_steps} latent steps; nearest tokens of each latent vector (logit lens):")
            for i, tokens in enumerate(a.readout or [], 1):
                lines.append(f"   {i:>3}: " + "  ".join(repr(t) for t in tokens))
        elif a.text is None:
            lines.append("   (prompt only: 0 latent steps)")
        if a.text is not None:
            lines.append(f"   [{a.generated_tokens} tokens]")
            lines.extend("   " + line for line in a.text.strip().splitlines())
    lines.append(f"\nanswer: {prediction}   (generated tokens: {trace.generated_tokens}, "
                 f"latent steps: {trace.latent_steps})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    cfg, _ = parse_config("diffmas run", "Answer one question with a method.", RunConfig, argv)
    if not cfg.question.strip():
        print("error: --question is required")
        return 2
    quiet_transformers()
    from diffmas.models import load_model

    lm = LM(*load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, cache_dir=cfg.cache_dir))
    task = get_task(cfg.task)
    method = build_method(cfg.method, lm, cfg, task, cfg.system, cfg.topology)
    import torch

    with torch.inference_mode():
        trace = method.run([cfg.question])[0]
    print(format_trace(trace, task.extract_answer(trace.final_text)))
    return 0
