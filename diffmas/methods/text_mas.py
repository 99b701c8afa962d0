"""``text_mas``: agents talk in text; each agent's decoded text goes into later agents' prompts."""

from __future__ import annotations

from diffmas.methods.base import AgentTrace, Method, Prepared, Trace
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
        messages = agent_messages(agent.instruction(self.family), question, final=j == len(system.agents) - 1,
                                  answer_format=self.answer_format, earlier=earlier)
        return self.lm.chat_ids(messages)

    def prepare(self, questions: list[str], ids: list[str] | None = None) -> Prepared:
        """Run every agent but the last, then prefill the last one's prompt (it has their texts)."""
        lm, cfg, system = self.lm, self.config, self.system
        batch = len(questions)
        texts: list[list[str]] = [[] for _ in range(batch)]
        traces: list[list[AgentTrace]] = [[] for _ in range(batch)]
        for j, agent in enumerate(system.agents):
            final = j == len(system.agents) - 1
            budget = cfg.max_new_tokens if final else (agent.max_new_tokens or cfg.agent_max_new_tokens)
            prompts = [self.prompt_ids(j, question, texts[b]) for b, question in enumerate(questions)]
            self.check_fits(ids, [len(p) + budget for p in prompts], f"agent {agent.name}'s prompt plus its tokens")
            # Each agent starts from a fresh cache: text MAS passes text, not state.
            cache = lm.new_cache(batch)
            hidden = lm.prefill(cache, agent.name, prompts)
            if final:
                break
            outputs = lm.decode(cache, agent.name, hidden, budget, cfg.sampling(offset=j))
            for b, (prompt, out) in enumerate(zip(prompts, outputs)):
                text = lm.decode_text(out)
                texts[b].append(text)
                traces[b].append(AgentTrace(agent.name, agent.role, len(prompt), text, len(out)))

        def finish(b: int, out: list[int]) -> Trace:
            text = lm.decode_text(out)
            return Trace(text, traces[b] + [AgentTrace(agent.name, agent.role, len(prompts[b]), text, len(out))])

        return Prepared(cache, hidden, agent.name, budget, cfg.sampling(offset=j), finish)
