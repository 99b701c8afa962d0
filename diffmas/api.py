"""The few-lines API: load a model, build a system, answer questions, evaluate. ``import diffmas``
exposes it.

    import diffmas

    system = diffmas.pipeline("latent_mas", task="gsm8k", latent_steps=10)
    answer = system("Tom has 3 boxes of 12 eggs and breaks 5. How many are left?")
    print(answer.prediction, answer.trace.generated_tokens)
    summary = system.evaluate(split="train", offset=-500, limit=50, out="runs/gsm8k-latent_mas")

A :class:`System` answers exactly as ``diffmas eval`` does with the same settings: the same
prompts, batching (``batch_size``, ``refill``, ``by_length``), answer cue and seeds, under
``torch.inference_mode()`` (outside it the CPU kernels take their training paths and bfloat16
answers can differ).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch

from diffmas.config import from_dict
from diffmas.engine import LM, ModelConfig
from diffmas.evaluate import EvalConfig, answer_cue, evaluate, stream_answers
from diffmas.methods import Method, Trace
from diffmas.tasks import Example, Task, get_task


def load(model: str | None = None, **options) -> LM:
    """A model (registry name, local directory or Hugging Face id) wrapped for DiffMAS; ``options``:
    ``dtype``, ``device``, ``cache_dir``, ``packed``, ``cpu_attention``, ``batch_invariant``."""
    settings = {**({"model": model} if model is not None else {}), **options}
    return from_dict(ModelConfig, settings, where="load()").load_lm()


@dataclass
class Answer:
    """One question's result: the final agent's text, the answer read from it (``None``: none could
    be read) and everything every agent did (:class:`~diffmas.methods.Trace`)."""

    question: str
    text: str
    prediction: str | None
    trace: Trace


class System:
    """A method on a loaded model with a task's prompts and answer format; call it on questions."""

    def __init__(self, config: EvalConfig, lm: LM):
        self.config, self.lm = config, lm
        self.task: Task = get_task(config.task)
        self.method: Method = config.build_method(lm, self.task)

    def __call__(self, questions: str | list[str] | list[Example]) -> Answer | list[Answer]:
        """Answer one question (returns an :class:`Answer`) or a list of them (a list, in order)."""
        one = isinstance(questions, str)
        items = [questions] if one else list(questions)
        examples = [q if isinstance(q, Example) else Example(f"#{i}", q, "") for i, q in enumerate(items)]
        answers = self._answer(examples)
        return answers[0] if one else answers

    def _answer(self, examples: list[Example]) -> list[Answer]:
        cfg = self.config
        cue = answer_cue(self.task, self.lm, lambda: examples) if cfg.answer_cue else None
        self.method.config.seed = cfg.seed
        out: list[Answer | None] = [None] * len(examples)
        torch.manual_seed(cfg.seed)
        with torch.inference_mode():
            for i, trace in stream_answers(self.method, examples, cfg, cue):
                prediction = self.task.extract_answer(trace.final_text, examples[i])
                out[i] = Answer(examples[i].question, trace.final_text, prediction, trace)
        return out  # type: ignore[return-value]

    def evaluate(self, **options) -> dict:
        """``diffmas eval`` with this system on its model: ``options`` are its settings (``split``,
        ``limit``, ``offset``, ``data_path``, ``out``, ``resume``, ...; the model's stay). Returns
        the summary, also written with the records under ``out``."""
        fixed = {f.name for f in fields(ModelConfig)}
        changed = sorted(k for k in options if k in fixed and options[k] != getattr(self.config, k))
        if changed:
            raise TypeError(
                f"evaluate() runs on the loaded model: {changed} cannot change here; use diffmas.evaluate()"
            )
        cfg = from_dict(EvalConfig, {**asdict(self.config), **options}, where="evaluate()")
        return evaluate(cfg, self.lm)


def pipeline(method: str = "latent_mas", model: str | LM | None = None, task: str = "gsm8k", **settings) -> System:
    """A :class:`System`: ``method`` (single, text_mas, latent_mas, or with ``adapter=`` a trained
    diffmas / single_sft) on ``model`` (a name or an already loaded :func:`load` result), with the
    prompts and answer format of ``task``. ``settings``: any option of ``diffmas eval``
    (``latent_steps``, ``system``, ``topology``, ``max_new_tokens``, ``dtype``, ``batch_size``, ...)."""
    lm = model if isinstance(model, LM) else None
    values = {"method": method, "task": task, **settings}
    if isinstance(model, str):
        values["model"] = model
    cfg = from_dict(EvalConfig, values, where="pipeline()")
    if lm is not None:
        cfg = replace(cfg, model=lm.name, dtype=str(lm.model.dtype).removeprefix("torch."), device=str(lm.device))
    return System(cfg, lm or cfg.load_lm())


def evaluate_method(method: str = "latent_mas", task: str = "gsm8k", **options) -> dict:
    """``diffmas eval`` from Python: loads the model, answers, writes records and the summary
    (``out``, default ``runs/<task>-<method>``) and returns the summary."""
    return evaluate(from_dict(EvalConfig, {"method": method, "task": task, **options}, where="evaluate()"))
