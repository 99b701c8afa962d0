"""``single``: one agent, chain of thought, answer in \\boxed{}."""

from __future__ import annotations

import torch

from diffmas.errors import DiffMASError
from diffmas.methods.base import Context, Method
from diffmas.prompts import single_messages


class SingleAgent(Method):
    name = "single"
    agent = "Solver"  # the one agent's name (its adapter's name when trained: single_sft)

    def build_prompts(self, questions: list[str]) -> list[list[int]]:
        """Token ids of the single-agent prompt of each question (inference and training)."""
        return [self.lm.chat_ids(single_messages(q, self.answer_format)) for q in questions]

    def build_context(
        self,
        questions: list[str],
        ids: list[str] | None = None,
        *,
        reserve: int | list[int] = 0,
        reserve_what: str = "--max-new-tokens",
        grad_last_k: int | None = None,
        hide_from_final: torch.Tensor | None = None,
    ) -> Context:
        if hide_from_final is not None:
            raise DiffMASError(f"method {self.name} has no upstream agents to hide")
        prompts = self.build_prompts(questions)
        cache, hidden = self.prefill_prompts(self.agent, prompts, ids, reserve, f"the prompt plus {reserve_what}")
        return Context(cache, hidden, self.agent, "solver", prompts, [[] for _ in questions])
