"""``single``: one agent, chain of thought, answer in \\boxed{}."""

from __future__ import annotations

from diffmas.methods.base import AgentTrace, Method, Trace
from diffmas.prompts import single_messages


class SingleAgent(Method):
    name = "single"

    def run(self, questions: list[str], ids: list[str] | None = None) -> list[Trace]:
        lm, cfg = self.lm, self.config
        prompts = [lm.chat_ids(single_messages(q, self.answer_format)) for q in questions]
        self.check_fits(ids, [len(p) + cfg.max_new_tokens for p in prompts], "the prompt plus --max-new-tokens")
        cache = lm.new_cache(len(prompts))
        hidden = lm.prefill(cache, "Solver", prompts)
        outputs = lm.decode(cache, "Solver", hidden, cfg.max_new_tokens, cfg.sampling())
        traces = []
        for prompt, out in zip(prompts, outputs):
            text = lm.decode_text(out)
            traces.append(Trace(text, [AgentTrace("Solver", "solver", len(prompt), text, len(out))]))
        return traces
