"""``single``: one agent, chain of thought, answer in \\boxed{}."""

from __future__ import annotations

from diffmas.methods.base import AgentTrace, Method, Trace
from diffmas.prompts import single_messages


class SingleAgent(Method):
    name = "single"
    agent = "Solver"  # the one agent's name (its adapter's name when trained: single_sft)

    def build_prompts(self, questions: list[str]) -> list[list[int]]:
        """Token ids of the single-agent prompt of each question (inference and training)."""
        return [self.lm.chat_ids(single_messages(q, self.answer_format)) for q in questions]

    def run(self, questions: list[str], ids: list[str] | None = None) -> list[Trace]:
        lm, cfg = self.lm, self.config
        prompts = self.build_prompts(questions)
        self.check_fits(ids, [len(p) + cfg.max_new_tokens for p in prompts], "the prompt plus --max-new-tokens")
        cache = lm.new_cache(len(prompts))
        hidden = lm.prefill(cache, self.agent, prompts)
        outputs = lm.decode(cache, self.agent, hidden, cfg.max_new_tokens, cfg.sampling())
        traces = []
        for prompt, out in zip(prompts, outputs):
            text = lm.decode_text(out)
            traces.append(Trace(text, [AgentTrace(self.agent, "solver", len(prompt), text, len(out))]))
        return traces
