"""``diffmas run``: answer one question and show what every agent passed on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffmas.cli._common import config_from, config_parser, quiet_transformers
from diffmas.config import option, redefault
from diffmas.errors import DiffMASError
from diffmas.methods import SetupConfig, Trace
from diffmas.options import TaskOptions
from diffmas.tasks import get_task


@dataclass
class RunConfig(SetupConfig, TaskOptions):
    question: str = option("", "the question to answer")
    task: str = redefault(
        TaskOptions, "task", "gsm8k", "task whose prompts and answer format to use (math, multiple choice...)"
    )
    readout_k: int = redefault(SetupConfig, "readout_k", 3, "logit-lens tokens shown per latent vector")


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
    lines.append(
        f"\nanswer: {prediction}   (generated tokens: {trace.generated_tokens}, latent steps: {trace.latent_steps})"
    )
    return "\n".join(lines)


def parser():
    return config_parser("diffmas run", "Answer one question with a method.", RunConfig)


def main(argv: list[str]) -> int:
    cfg, _ = config_from(parser(), RunConfig, argv)
    if not cfg.question.strip():
        raise DiffMASError('--question is required, e.g. diffmas run --question "What is 12 * 7?"')
    quiet_transformers()
    task = get_task(cfg.task)
    method = cfg.build_method(cfg.load_lm(), task)
    with torch.inference_mode():
        trace = method.run([cfg.question])[0]
    print(format_trace(trace, task.extract_answer(trace.final_text)))
    return 0
