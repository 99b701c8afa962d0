"""``latent_mas``: agents communicate through one shared, growing KV cache.

Each upstream agent prefills its own prompt on top of the trace written by the agents it can see
and then runs latent steps (its last hidden state, realigned, fed back as the next input). The
final agent prefills its prompt on top of the whole trace and decodes the answer. The trace is
[A1 prompt, A1 latents, A2 prompt, A2 latents, ..., final prompt, answer]; nothing is overwritten.
With 0 latent steps the final agent still reads the upstream agents' prompt segments.

:meth:`LatentMAS.build_context` is everything up to the answer. Inference decodes on top of it;
training (diffmas.train.objective) teacher-forces a target on top of the very same trace.
"""

from __future__ import annotations

import contextlib

import torch

from diffmas.errors import DiffMASError
from diffmas.kv_trace import SharedKVCache
from diffmas.latent import LatentMap, latent_map_for, run_latent_steps
from diffmas.methods.base import AgentTrace, Context, Method, per_row
from diffmas.prompts import agent_messages


class LatentMAS(Method):
    name = "latent_mas"
    uses_system = True
    # A trainable map (diffmas.latent.CommAdapter) to use instead of the fixed realigner.
    comm: LatentMap | None = None

    @property
    def latent_map(self) -> LatentMap:
        if self.comm is not None:
            return self.comm
        cfg = self.config
        return latent_map_for(self.lm, cfg.latent_input, cfg.realign, cfg.soft_temperature)

    def steps_for(self, index: int) -> int:
        agent = self.system.agents[index]
        return self.config.latent_steps if agent.latent_steps is None else agent.latent_steps

    def build_prompts(self, questions: list[str]) -> list[list[list[int]]]:
        """prompts[j][b]: token ids of agent j's prompt for question b (they do not depend on
        earlier agents' output: that arrives through the cache)."""
        system, n = self.system, len(self.system.agents)
        prompts, asks = [], []  # asks[j]: whether agent j's prompt states the question
        for j, agent in enumerate(system.agents):
            unseen = not any(asks[i] for i in system.sees(j))  # no prompt it reads states the question
            if agent.question is False and unseen:
                raise DiffMASError(
                    f"agent {agent.name} has question: false, but no agent whose work it reads "
                    "is given the question: it would have no way to read it"
                )
            asks.append(agent.question if agent.question is not None else bool(self.config.repeat_question) or unseen)
            messages = [
                agent_messages(
                    agent.instruction(self.family),
                    q if asks[j] else None,
                    final=j == n - 1,
                    answer_format=self.answer_format,
                    latent_context=bool(system.sees(j)),
                )
                for q in questions
            ]
            prompts.append([self.lm.chat_ids(m) for m in messages])
        return prompts

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
        """Run every upstream agent (prefill + latent steps) and prefill the final agent's prompt.

        ``reserve``: positions each row still needs after the trace (the answer budget, or the
        length of a teacher-forced target), checked against the model's context (``reserve_what``:
        the same message whatever it is, the trace's parts are counted together).

        ``grad_last_k`` only ever *turns gradients off*, so inference under ``inference_mode`` is
        unaffected. None: the ambient grad mode everywhere. k >= 0: each upstream agent's prompt
        and all but its last k latent steps run under :meth:`SharedKVCache.frozen` (``no_grad``
        that keeps the graph of earlier entries), so their KV entries and the hidden state
        entering step n-k are constants and gradient reaches upstream agents only through their
        last k latent steps (k = 0: not at all). The final prompt keeps the ambient mode.

        ``hide_from_final``: optional (B, n_upstream) bool; True hides all of upstream agent j's
        segments from row b's final agent (communication dropout). They stay hidden for whatever
        is appended afterwards (decoding or a target).
        """
        prompts = self.build_prompts(questions)
        reserve = per_row(reserve, len(questions))
        steps = sum(self.steps_for(j) for j in range(len(self.system.agents) - 1))
        needed = [sum(len(p[b]) for p in prompts) + steps + reserve[b] for b in range(len(questions))]
        self.check_fits(ids, needed, "the shared trace (all prompts, latent steps and the answer)")
        cache, traces = self.run_upstream(prompts, grad_last_k)
        if self.config.ablate is not None:
            self._ablate(cache, self.config.ablate)
        return self.finish_context(cache, prompts[-1], traces, hide_from_final)

    def _ablate(self, cache: SharedKVCache, how: str) -> None:
        """Take from the final agent what the ablation ``how`` says (MethodConfig.ablate)."""
        upstream = {a.name for a in self.system.upstream}
        segments = [s for s in cache.segments if s.agent in upstream and (how == "mask" or s.kind == "latent")]
        if how in ("mask", "mask-latents"):
            for seg in segments:
                cache.set_visible(seg, False)
            return
        if cache.batch_size < 2:
            raise DiffMASError(
                "the shuffle ablation needs at least 2 problems per batch (each reads the next one's latent "
                "steps); got a batch of 1: choose a --batch-size or --limit that leaves no problem alone"
            )
        source = torch.roll(torch.arange(cache.batch_size), -1)
        for seg in segments:
            cache.borrow_rows(seg, source)

    def run_upstream(
        self, prompts: list[list[list[int]]], grad_last_k: int | None = None
    ) -> tuple[SharedKVCache, list[list[AgentTrace]]]:
        """A fresh trace holding every upstream agent's prompt ``prompts[j]`` and latent steps
        (``grad_last_k`` as in :meth:`build_context`), with one AgentTrace per agent and row."""
        lm, cfg, system = self.lm, self.config, self.system
        batch = len(prompts[0])
        upstream = range(len(system.agents) - 1)
        cache = lm.new_cache(batch)
        index = {a.name: i for i, a in enumerate(system.agents)}
        traces: list[list[AgentTrace]] = [[] for _ in range(batch)]
        for j in upstream:
            agent = system.agents[j]
            # Independent agents (hierarchical topology) must not attend to their siblings' segments.
            hidden_segments = [s for s in cache.segments if index[s.agent] not in system.sees(j)]
            for seg in hidden_segments:
                cache.set_visible(seg, False)
            n = self.steps_for(j)
            k = n if grad_last_k is None else min(grad_last_k, n)
            frozen = contextlib.nullcontext() if grad_last_k is None else cache.frozen()
            with frozen:
                hidden = lm.prefill(cache, agent.name, prompts[j])
                hidden, early = run_latent_steps(lm, cache, agent.name, hidden, n - k, self.latent_map, cfg.readout_k)
            _, late = run_latent_steps(lm, cache, agent.name, hidden, k, self.latent_map, cfg.readout_k)
            for seg in hidden_segments:
                cache.set_visible(seg, True)
            for b in range(batch):
                traces[b].append(
                    AgentTrace(
                        agent.name,
                        agent.role,
                        len(prompts[j][b]),
                        latent_steps=n,
                        readout=early[b] + late[b] if cfg.readout_k else None,
                    )
                )

        return cache, traces

    def finish_context(
        self,
        cache: SharedKVCache,
        final_prompts: list[list[int]],
        upstream: list[list[AgentTrace]],
        hide_from_final: torch.Tensor | None = None,
    ) -> Context:
        """Hide what ``hide_from_final`` says and prefill the final agent's prompts on the upstream trace."""
        if hide_from_final is not None:
            self._hide_upstream(cache, hide_from_final)
        final = self.system.final
        hidden = self.lm.prefill(cache, final.name, final_prompts)
        return Context(cache, hidden, final.name, final.role, final_prompts, upstream)

    def _hide_upstream(self, cache: SharedKVCache, hide: torch.Tensor) -> None:
        upstream = self.system.upstream
        if tuple(hide.shape) != (cache.batch_size, len(upstream)):
            raise ValueError(
                f"hide_from_final must be (B, n_upstream) = {(cache.batch_size, len(upstream))}, "
                f"got {tuple(hide.shape)}"
            )
        for j, agent in enumerate(upstream):
            for seg in cache.segments_of(agent.name):
                cache.set_visible(seg, False, rows=hide[:, j].bool())
