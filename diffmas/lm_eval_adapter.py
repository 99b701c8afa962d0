"""Run any DiffMAS method inside lm-evaluation-harness (``lm_eval``): generative and likelihood tasks.

lm_eval hands the model a list of requests. ``generate_until``: each prompt (the task's formatted
context, with any few-shot examples) becomes the *question* of a DiffMAS method (``single``,
``text_mas``, ``latent_mas`` or a trained ``diffmas`` / ``single_sft``), batched, and the final
agent's text comes back cut at the first ``until`` string. ``loglikelihood``: the method builds its
whole context for the prompt (the upstream agents' trace included) and the final agent reads the
continuation on top of it (:meth:`diffmas.methods.base.Method.score`); a question's context is
built once for all its options. ``loglikelihood_rolling``: the text, in windows that fit the
context, read as the final agent's answer to an empty question. lm_eval's own filters and
metrics then score it.

From the shell, lm_eval's own command line with the model registered::

    diffmas lm-eval --model diffmas --model_args method=text_mas --batch_size 8 --tasks gsm8k,arc_easy

``lm_eval --model diffmas`` itself cannot find the model: lm_eval 0.4 knows the models of its
own table and those registered by code already imported, and its command line imports no user
code (``--include_path`` reads task YAML files only). ``diffmas lm-eval`` is lm_eval's command
line (every flag the same) after ``import diffmas.lm_eval_adapter``. From Python::

    import lm_eval
    import diffmas.lm_eval_adapter  # registers the model name "diffmas"
    lm_eval.simple_evaluate(model="diffmas", model_args="method=latent_mas,latent_steps=10", tasks=["gsm8k"])

(On lm_eval's command line the batch size is its own ``--batch_size``, not a model argument.)
With ``--apply_chat_template`` lm_eval's messages (system prompt, few-shot turns, the question)
are folded into one question: every agent already speaks in the model's chat template, with its
own role prompt around the question.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import fields
from types import SimpleNamespace

from lm_eval.api.model import LM as HarnessLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from diffmas.config import from_dict
from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.methods import SetupConfig, build_method
from diffmas.prompts import DEFAULT_ANSWER_FORMAT

logger = logging.getLogger(__name__)

# What the final agent is told about the answer's form. lm_eval's tasks extract answers their own
# way (for example the last number of the text), so the default asks for a plain final line.
PLAIN_ANSWER_FORMAT = "End with the final answer on its own line."


@register_model("diffmas")
class DiffMASHarnessLM(HarnessLM):
    """``model_args``: any option of ``diffmas eval``'s model and method settings (model, dtype,
    method, topology, system, latent_steps, adapter, max_new_tokens, ...) plus ``batch_size``,
    ``family`` (math | multiple_choice | code: which role prompts the agents get) and
    ``answer_format`` (the final agent's instruction about the answer; or the name of a task family
    to reuse its instruction)."""

    def __init__(
        self,
        batch_size: int | str | None = 8,
        family: str = "math",
        answer_format: str | None = None,
        lm: LM | None = None,
        max_batch_size: int | None = None,
        **options,
    ):
        super().__init__()
        known = {f.name for f in fields(SetupConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise DiffMASError(
                f"unknown model_args {unknown}; valid: batch_size, family, answer_format, {', '.join(sorted(known))}"
            )
        import torch

        device = str(options.get("device") or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line asks for "cuda" unless told otherwise (--device cpu).
            logger.warning("device %r is not available here; running on the CPU", device)
            device = "cpu"
        options["device"] = device
        self.setup = from_dict(SetupConfig, options)
        # lm_eval's command line passes its own --batch_size (default 1; "auto" means "choose"),
        # and max_batch_size, which a fixed batch has no use for.
        auto = batch_size is None or (isinstance(batch_size, str) and batch_size.startswith("auto"))
        self.batch_size = 8 if auto else int(batch_size)
        if self.batch_size < 1:
            raise DiffMASError(f"batch_size must be at least 1, got {batch_size}")
        self.lm = lm or self.setup.load_lm()
        fmt = DEFAULT_ANSWER_FORMAT.get(answer_format, answer_format) if answer_format else PLAIN_ANSWER_FORMAT
        task = SimpleNamespace(family=family, answer_format=fmt)
        self.method = build_method(
            self.setup.method,
            self.lm,
            self.setup.method_config(),
            task,
            self.setup.system,
            self.setup.topology,
            self.setup.adapter,
        )

    # -- what lm_eval calls ---------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        import torch

        results: list[str | None] = [None] * len(requests)
        # Requests with the same generation arguments run together, in batches.
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc=f"diffmas {self.setup.method}")
        config = self.method.config
        base_budget, base_temperature, base_top_p = config.max_new_tokens, config.temperature, config.top_p
        try:
            for indices in groups.values():
                kwargs = dict(requests[indices[0]].args[1])
                until = _until(kwargs.get("until"))
                config.max_new_tokens = int(kwargs.get("max_gen_toks", base_budget))
                sample = bool(kwargs.get("do_sample", False)) or float(kwargs.get("temperature", 0) or 0) > 0
                config.temperature = float(kwargs.get("temperature", 1.0) or 1.0) if sample else 0.0
                config.top_p = float(kwargs.get("top_p", base_top_p) or 1.0) if sample else 1.0
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    with torch.inference_mode():
                        traces = self.method.run([requests[i].args[0] for i in chunk])
                    for i, trace in zip(chunk, traces):
                        results[i] = cut(trace.final_text, until)
                    bar.update(len(chunk))
        finally:
            config.max_new_tokens, config.temperature, config.top_p = base_budget, base_temperature, base_top_p
            bar.close()
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [(req.args[0], req.args[1]) for req in requests]
        return self._score(pairs, disable_tqdm, "loglikelihood")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        # Each text in windows that leave room for the (empty-question) context; window sums add up.
        tok, lm = self.lm.tokenizer, self.lm
        room = max(1, lm.max_positions - self._empty_context_length())
        pieces, owner = [], []
        for i, req in enumerate(requests):
            ids = tok(req.args[0], add_special_tokens=False)["input_ids"]
            for start in range(0, max(len(ids), 1), room):
                pieces.append(("", ids[start : start + room]))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, self._score(pieces, disable_tqdm, "loglikelihood_rolling")):
            totals[i] += logp
        return totals

    def _score(self, pairs: list[tuple[str, str | list[int]]], disable_tqdm: bool, what: str):
        import torch

        # Requests of one context (a question's options) go together, and each batch holds at
        # most batch_size distinct contexts: their trace is built once (Method.score).
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        bar = tqdm(total=len(pairs), disable=disable_tqdm, desc=f"diffmas {self.setup.method} {what}")
        batch: list[int] = []

        def flush() -> None:
            with torch.inference_mode():
                scores = self.method.score([pairs[i][0] for i in batch], [pairs[i][1] for i in batch])
            for i, s in zip(batch, scores):
                out[i] = s
            bar.update(len(batch))
            batch.clear()

        contexts = 0  # distinct contexts in the batch (the requests come sorted by context)
        for i in order:
            new = not batch or pairs[i][0] != pairs[batch[-1]][0]
            if new and contexts == self.batch_size:
                flush()
                contexts = 0
            contexts += new
            batch.append(i)
        if batch:
            flush()
        bar.close()
        return out

    def _empty_context_length(self) -> int:
        """Positions the method's context takes for an empty question (plus one for safety)."""
        import torch

        with torch.inference_mode():
            ctx = self.method.build_context([""])
        return int(ctx.cache.real_lengths()[0]) + 1

    # -- chat templates (--apply_chat_template) -------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.lm.tokenizer, "name_or_path", "diffmas")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.lm.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return fold_messages(chat_history)


def fold_messages(chat_history: list[dict[str, str]]) -> str:
    """lm_eval's chat messages as one question: the system prompt first, earlier turns (few-shot
    examples) as a transcript, the last user message last. The agents put their own role prompts
    and the model's chat template around it."""
    parts = []
    for message in chat_history:
        role, content = message.get("role", "user"), str(message.get("content", ""))
        if role == "system" or message is chat_history[-1]:
            parts.append(content)
        else:
            parts.append(f"{role.capitalize()}: {content}")
    return "\n\n".join(p for p in parts if p)


def _until(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [u for u in value if u]


def cut(text: str, until: list[str]) -> str:
    """``text`` up to the first occurrence of any stop string (lm_eval's contract)."""
    end = len(text)
    for stop in until:
        pos = text.find(stop)
        if pos != -1:
            end = min(end, pos)
    return text[:end]


def main(argv: list[str] | None = None) -> int:
    """lm_eval's command line with the ``diffmas`` model registered (``diffmas lm-eval``)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
