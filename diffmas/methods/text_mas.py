"""``text_mas``: agents talk in text; each agent's decoded text goes into later agents' prompts."""

from __future__ import annotations

import torch

from diffmas.decoding import decode
from diffmas.errors import DiffMASError
from diffmas.methods.base import AgentTrace, Context, Method
from diffmas.prompts import agent_messages


class TextMAS(Method):
    name = "text_mas"
    uses_system = True

    def prompt_ids(self, j: int, question: str, texts: list[str]) -> list[int]:
        """Token ids of agent ``j``'s prompt, given the texts of the agents before it
        (``texts[k]``: agent k's text; only the agents ``j`` sees are shown to it)."""
        system = self.system
        agent = system.agents[j]
        earlier = [(system.agents[k].name, texts[k]) for k in system.sees(j)]
        messages = agent_messages(
            agent.instruction(self.family),
            question,
            final=j == len(system.agents) - 1,
            answer_format=self.answer_format,
            earlier=earlier,
        )
        return self.lm.chat_ids(messages)

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
        """Run every agent but the last, then prefill the last one's prompt (it has their texts)."""
        if grad_last_k is not None or hide_from_final is not None:
            raise DiffMASError("text_mas passes text: its upstream agents have no latent trace to freeze or hide")
        lm, cfg, system = self.lm, self.config, self.system
        batch = len(questions)
        texts: list[list[str]] = [[] for _ in range(batch)]
        traces: list[list[AgentTrace]] = [[] for _ in range(batch)]
        for j, agent in enumerate(system.agents[:-1]):
            budget = agent.max_new_tokens or cfg.agent_max_new_tokens
            prompts = [self.prompt_ids(j, question, texts[b]) for b, question in enumerate(questions)]
            # Each agent starts from a fresh cache: text MAS passes text, not state.
            cache, hidden = self.prefill_prompts(
                agent.name, prompts, ids, budget, f"agent {agent.name}'s prompt plus its tokens"
            )
            outputs = decode(lm, cache, agent.name, hidden, budget, cfg.sampling(offset=j))
            for b, (prompt, out) in enumerate(zip(prompts, outputs)):
                text = lm.decode_text(out)
                texts[b].append(text)
                traces[b].append(AgentTrace(agent.name, agent.role, len(prompt), text, len(out)))
        j, final = len(system.agents) - 1, system.final
        prompts = [self.prompt_ids(j, question, texts[b]) for b, question in enumerate(questions)]
        cache, hidden = self.prefill_prompts(
            final.name, prompts, ids, reserve, f"agent {final.name}'s prompt plus its tokens"
        )
        return Context(cache, hidden, final.name, final.role, prompts, traces, sampling_offset=j)
