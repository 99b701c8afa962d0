"""Run any DiffMAS method inside lm-evaluation-harness (``lm_eval``), on its generative tasks.

lm_eval hands the model a list of requests, each a prompt (the task's formatted context, with any
few-shot examples) and generation arguments (``until`` strings, ``max_gen_toks``, sampling). The
adapter passes each prompt as the *question* to a DiffMAS method (``single``, ``text_mas``,
``latent_mas`` or a trained ``diffmas`` / ``single_sft``), batched, and returns the final agent's
text cut at the first ``until`` string. lm_eval's own filters and metrics then score it.

From Python::

    import lm_eval
    import diffmas.lm_eval_adapter  # registers the model name "diffmas"
    lm_eval.simple_evaluate(model="diffmas", model_args="method=latent_mas,latent_steps=10", tasks=["gsm8k"])

From the shell (lm_eval's own command line, with the model registered first)::

    python -m diffmas.lm_eval_adapter run --model diffmas --model_args method=text_mas --batch_size 8 --tasks gsm8k

(On lm_eval's command line the batch size is its own ``--batch_size``, not a model argument.)

Only ``generate_until`` is supported: a multi-agent system produces text, not the likelihood of a
given continuation, so loglikelihood tasks (most multiple-choice ones in lm_eval) raise a clear
error; use their generative variants or ``diffmas eval``.
"""

from __future__ import annotations

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
            print(f"note: device {device!r} is not available here; running on the CPU", file=sys.stderr)
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

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise DiffMASError(_NO_LIKELIHOOD)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise DiffMASError(_NO_LIKELIHOOD)


_NO_LIKELIHOOD = (
    "the diffmas model supports only generative lm_eval tasks (output_type: generate_until): a "
    "multi-agent system writes text and assigns no likelihood to a given continuation; pick the "
    "task's generative variant (e.g. gsm8k, arc_challenge_chat) or use `diffmas eval`"
)


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
    """lm_eval's command line with the ``diffmas`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
