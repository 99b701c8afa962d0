"""``single``: one agent, chain of thought, answer in \\boxed{}."""

from __future__ import annotations

from diffmas.methods.base import AgentTrace, Method, Prepared, Trace
from diffmas.prompts import single_messages


class SingleAgent(Method):
    name = "single"
    agent = "Solver"  # the one agent's name (its adapter's name when trained: single_sft)

    def build_prompts(self, questions: list[str]) -> list[list[int]]:
        """Token ids of the single-agent prompt of each question (inference and training)."""
        return [self.lm.chat_ids(single_messages(q, self.answer_format)) for q in questions]

    def prepare(self, questions: list[str], ids: list[str] | None = None) -> Prepared:
        lm, cfg = self.lm, self.config
        prompts = self.build_prompts(questions)
        self.check_fits(ids, [len(p) + cfg.max_new_tokens for p in prompts], "the prompt plus --max-new-tokens")
        cache = lm.new_cache(len(prompts))
        hidden = lm.prefill(cache, self.agent, prompts)

        def finish(b: int, out: list[int]) -> Trace:
            text = lm.decode_text(out)
            return Trace(text, [AgentTrace(self.agent, "solver", len(prompts[b]), text, len(out))])

        return Prepared(cache, hidden, self.agent, cfg.max_new_tokens, cfg.sampling(), finish)
