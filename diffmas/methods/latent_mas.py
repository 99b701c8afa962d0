"""``latent_mas``: agents communicate through one shared, growing KV cache.

Each upstream agent prefills its own prompt on top of the trace written by the agents it can see
and then runs latent steps (its last hidden state, realigned, fed back as the next input). The
final agent prefills its prompt on top of the whole trace and decodes the answer. The trace is
[A1 prompt, A1 latents, A2 prompt, A2 latents, ..., final prompt, answer]; nothing is overwritten.
With 0 latent steps the final agent still reads the upstream agents' prompt segments.
"""

from __future__ import annotations

from diffmas.latent import Realigner, run_latent_steps
from diffmas.methods.base import AgentTrace, Method, Trace
from diffmas.prompts import agent_messages


class LatentMAS(Method):
    name = "latent_mas"
    uses_system = True

    @property
    def realigner(self) -> Realigner:
        return Realigner.for_lm(self.lm, self.config.realign)

    def steps_for(self, index: int) -> int:
        agent = self.system.agents[index]
        return self.config.latent_steps if agent.latent_steps is None else agent.latent_steps

    def build_prompts(self, questions: list[str]) -> list[list[list[int]]]:
        """prompts[j][b]: token ids of agent j's prompt for question b (they do not depend on
        earlier agents' output: that arrives through the cache)."""
        system, n = self.system, len(self.system.agents)
        prompts = []
        for j, agent in enumerate(system.agents):
            messages = [
                agent_messages(
                    agent.instruction(self.family), q, final=j == n - 1,
                    answer_format=self.answer_format, latent_context=bool(system.sees(j)),
                )
                for q in questions
            ]
            prompts.append([self.lm.chat_ids(m) for m in messages])
        return prompts

    def run(self, questions: list[str], ids: list[str] | None = None) -> list[Trace]:
        lm, cfg, system = self.lm, self.config, self.system
        batch = len(questions)
        prompts = self.build_prompts(questions)
        upstream = range(len(system.agents) - 1)
        steps = sum(self.steps_for(j) for j in upstream)
        needed = [sum(len(p[b]) for p in prompts) + steps + cfg.max_new_tokens for b in range(batch)]
        self.check_fits(ids, needed, "the shared trace (all prompts, latent steps and --max-new-tokens)")

        cache = lm.new_cache(batch)
        index = {a.name: i for i, a in enumerate(system.agents)}
        traces: list[list[AgentTrace]] = [[] for _ in range(batch)]
        for j in upstream:
            agent = system.agents[j]
            # Independent agents (hierarchical topology) must not attend to their siblings' segments.
            hidden_segments = [s for s in cache.segments if index[s.agent] not in system.sees(j)]
            for seg in hidden_segments:
                cache.set_visible(seg, False)
            hidden = lm.prefill(cache, agent.name, prompts[j])
            n = self.steps_for(j)
            _, readouts = run_latent_steps(lm, cache, agent.name, hidden, n, self.realigner, cfg.readout_k)
            for seg in hidden_segments:
                cache.set_visible(seg, True)
            for b in range(batch):
                traces[b].append(
                    AgentTrace(agent.name, agent.role, len(prompts[j][b]), latent_steps=n,
                               readout=readouts[b] if cfg.readout_k else None)
                )

        final = system.final
        hidden = lm.prefill(cache, final.name, prompts[-1])
        outputs = lm.decode(cache, final.name, hidden, cfg.max_new_tokens, cfg.sampling())
        results = []
        for b, out in enumerate(outputs):
            text = lm.decode_text(out)
            traces[b].append(AgentTrace(final.name, final.role, len(prompts[-1][b]), text, len(out)))
            results.append(Trace(text, traces[b]))
        return results
