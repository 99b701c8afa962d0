"""What every method shares: its settings, its output (a trace per problem) and its interface."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch

from diffmas.agents import SystemSpec
from diffmas.config import option
from diffmas.decoding import AnswerCue, DecodePool, Finished, Sampling, decode_rows
from diffmas.engine import LM
from diffmas.errors import ContextLengthError, DiffMASError
from diffmas.kv_trace import SharedKVCache
from diffmas.latent import LATENT_INPUTS
from diffmas.methods.scoring import continuation_scores
from diffmas.options import SamplingOptions
from diffmas.prompts import DEFAULT_ANSWER_FORMAT

ABLATIONS = ("shuffle", "mask-latents", "mask")
DEFAULT_LATENT_STEPS = 10
_clock = time.perf_counter  # what run_stream charges answers with (a test replaces it)


@dataclass
class MethodConfig(SamplingOptions):
    latent_steps: int | None = option(
        None,
        f"latent steps per upstream agent (default: {DEFAULT_LATENT_STEPS}; diffmas: as its adapters were trained)",
    )
    realign: bool = option(True, "map hidden states into the input-embedding space before feeding them back")
    latent_input: str | None = option(
        None,
        "what a latent step feeds back: hidden (the realigned last hidden state, as LatentMAS) or soft (the "
        "input embedding expected under its next-token distribution) (default: hidden; diffmas: as trained)",
        choices=LATENT_INPUTS,
    )
    soft_temperature: float | None = option(
        None, "temperature of the soft latent input's distribution (default: 1; diffmas: as trained)"
    )
    max_new_tokens: int = option(512, "token budget of the agent that writes the answer")
    agent_max_new_tokens: int = option(256, "token budget of each intermediate text agent (text_mas)")
    # An untrained latent_mas judger ended its turn at once on 6 of 50 MedQA problems: an empty
    # answer is never useful, so the first token may not be a stop token.
    min_new_tokens: int = option(1, "each agent writes at least this many tokens before it may stop")
    stop_loops: int = option(
        0,
        "stop an agent's text once its last N tokens are one short block repeated at "
        "least 4 times (a decoding loop); 0: off, else at least 16",
    )
    # Stated once (the default), the shared trace is shorter and, untrained, latent_mas was more
    # accurate on GSM8K and ARC-Challenge (docs/concepts.md, "The question is stated once").
    repeat_question: bool | None = option(
        None,
        "latent_mas / diffmas: state the question in every agent's prompt, as LatentMAS does (default: "
        "latent_mas only in the prompts of agents that cannot read it in the shared cache, for shorter traces; "
        "diffmas as its adapters were trained)",
    )
    readout_k: int = option(0, "show the top-k logit-lens tokens of each latent vector (display only)")
    ablate: str | None = option(
        None,
        "latent_mas / diffmas, to test what the final agent takes from the latent channel: shuffle (each "
        "problem's upstream latent steps, as the final agent reads them, are those of the next problem in its "
        "batch), mask-latents (the final agent does not see them; the upstream prompts stay), mask (it sees "
        "no upstream segment at all)",
        choices=ABLATIONS,
    )

    def __post_init__(self) -> None:
        if self.latent_steps is not None and not 0 <= self.latent_steps <= 1024:
            raise DiffMASError(f"latent_steps must be in [0, 1024], got {self.latent_steps}")
        for name in ("max_new_tokens", "agent_max_new_tokens"):
            if getattr(self, name) < 1:
                raise DiffMASError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.min_new_tokens <= min(self.max_new_tokens, self.agent_max_new_tokens):
            raise DiffMASError(
                f"min_new_tokens must be in [0, {min(self.max_new_tokens, self.agent_max_new_tokens)}] "
                f"(the token budgets), got {self.min_new_tokens}"
            )
        if self.ablate not in (None, *ABLATIONS):
            raise DiffMASError(f"ablate must be one of {', '.join(ABLATIONS)}, got {self.ablate!r}")
        self.sampling()  # the decoding settings' own checks (stop_loops, top_p), before anything runs

    def sampling(self, offset: int = 0) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.seed + offset, self.min_new_tokens, self.stop_loops)


@dataclass
class AgentTrace:
    """One agent's contribution to one problem."""

    agent: str
    role: str
    prompt_tokens: int
    text: str | None = None  # decoded text (text agents and the final agent)
    generated_tokens: int = 0
    latent_steps: int = 0
    readout: list[list[str]] | None = None  # logit-lens top-k tokens per latent vector
    answer_cued: bool = False  # no answer could be read until the task's answer cue was appended (AnswerCue)
    perplexity: float | None = None  # of the tokens it chose, under the model that chose them (answering agent)


@dataclass
class Trace:
    """Everything a method did for one problem."""

    final_text: str
    agents: list[AgentTrace] = field(default_factory=list)
    # This problem's share of the compute time (Method.run_stream): of its batch's preparation, an
    # equal share, and of every decoding step it was in, an equal share with the rows beside it.
    seconds: float | None = None

    @property
    def generated_tokens(self) -> int:
        return sum(a.generated_tokens for a in self.agents)

    @property
    def latent_steps(self) -> int:
        return sum(a.latent_steps for a in self.agents)

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens for a in self.agents)

    @property
    def perplexity(self) -> float | None:
        """The answer's decoding perplexity (see :attr:`diffmas.decoding.Finished.perplexity`)."""
        return self.agents[-1].perplexity if self.agents else None

    @property
    def answer_cued(self) -> bool:
        return bool(self.agents) and self.agents[-1].answer_cued

    def mark_cued(self, cue_tokens: int) -> None:
        """``cue_tokens`` of the final agent's ids are the answer cue (see
        :class:`~diffmas.decoding.AnswerCue`): fed, not generated, so they count as prompt tokens."""
        final = self.agents[-1]
        final.answer_cued = True
        final.generated_tokens -= cue_tokens
        final.prompt_tokens += cue_tokens


def finished_trace(finish: Callable[[int, list[int]], Trace], row: int, done: Finished) -> Trace:
    """Row ``row``'s trace from what decoding returned for it (its ids, cue and perplexity)."""
    trace = finish(row, done.ids)
    trace.agents[-1].perplexity = done.perplexity
    if done.cue_at is not None:
        trace.mark_cued(done.cue_tokens)
    return trace


def per_row(value: int | list[int], batch: int) -> list[int]:
    """A per-row count from one value for every row or a list of them."""
    return [value] * batch if isinstance(value, int) else list(value)


def missing_adapter(method: str) -> DiffMASError:
    return DiffMASError(
        f"method {method} runs a trained system: pass --adapter DIR, a `diffmas train` output "
        "directory or one of its checkpoints (e.g. runs/train-x/final)"
    )


@dataclass
class Prepared:
    """A batch brought up to its answers: the answering agent's trace, ready to decode."""

    cache: SharedKVCache
    last_hidden: torch.Tensor  # (B, d): the hidden state of each row's last prompt token
    agent: str  # who writes the answers
    max_new_tokens: int
    sampling: Sampling
    finish: Callable[[int, list[int]], Trace]  # (row, answer ids) -> that problem's trace


@dataclass
class Context:
    """A batch brought up to where the answering agent writes: the one forward pass that inference
    (which decodes on top of it) and training (which teacher-forces a target on it) share."""

    cache: SharedKVCache
    last_hidden: torch.Tensor  # (B, d): the hidden state of each row's last prompt token of the answering agent
    agent: str  # who writes the answers
    role: str
    prompts: list[list[int]]  # prompts[b]: token ids of the answering agent's prompt for row b
    upstream: list[list[AgentTrace]]  # upstream[b]: one AgentTrace per agent before it, for row b
    sampling_offset: int = 0  # added to the sampling seed of the answering agent (text_mas: its index)


class Method:
    """A way of answering a batch of questions with one model.

    Subclasses implement :meth:`build_context` (everything before the answer is written);
    answering is shared: :meth:`prepare` builds the context for decoding, :meth:`run` decodes one
    batch, :meth:`run_stream` lets later batches join the answers still being written.
    """

    name = "method"
    uses_system = False
    needs_adapter = False  # trained methods: their adapters come from a `diffmas train` checkpoint

    def __init__(
        self,
        lm: LM,
        config: MethodConfig | None = None,
        *,
        family: str = "math",
        answer_format: str | None = None,
        system: SystemSpec | None = None,
        adapter: str | None = None,
    ):
        self.lm = lm
        self.config = config or MethodConfig()
        if self.config.latent_steps is None:  # trained methods resolve it from their checkpoint first
            self.config = replace(self.config, latent_steps=DEFAULT_LATENT_STEPS)
        if family not in DEFAULT_ANSWER_FORMAT:
            raise DiffMASError(f"family must be one of {sorted(DEFAULT_ANSWER_FORMAT)}, got {family!r}")
        self.family = family
        # What the answering agent is told about the answer's form; by default its family's.
        self.answer_format = DEFAULT_ANSWER_FORMAT[family] if answer_format is None else answer_format
        self.system = system
        self.adapter = adapter
        if self.uses_system and system is None:
            raise DiffMASError(f"method {self.name} needs a multi-agent system")
        if self.needs_adapter and adapter is None:
            raise missing_adapter(self.name)
        if adapter is not None and not self.needs_adapter:
            raise DiffMASError(
                f"method {self.name} takes no --adapter; trained adapters run with --method "
                "diffmas (latent MAS) or single_sft (single agent)"
            )

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
        """Run everything before the answer and prefill the answering agent's prompt.

        ``reserve``: positions each row still needs after the context (the answer budget, or the
        length of a teacher-forced target; ``reserve_what`` names it in the error when a row does
        not fit the model's context). ``grad_last_k`` and ``hide_from_final`` say how gradients
        reach upstream agents and which of them the answering agent sees (see
        :meth:`LatentMAS.build_context <diffmas.methods.latent_mas.LatentMAS.build_context>`);
        methods without upstream latent agents take only the defaults.
        """
        raise NotImplementedError

    def prefill_prompts(
        self, agent: str, prompts: list[list[int]], ids: list[str] | None, reserve: int | list[int], what: str
    ) -> tuple[SharedKVCache, torch.Tensor]:
        """A fresh trace holding ``agent``'s left-padded ``prompts``, checked to leave ``reserve``
        positions per row; returns it with the (B, d) last hidden states."""
        reserve = per_row(reserve, len(prompts))
        self.check_fits(ids, [len(p) + r for p, r in zip(prompts, reserve)], what)
        cache = self.lm.new_cache(len(prompts))
        return cache, self.lm.prefill(cache, agent, prompts)

    def prepare(self, questions: list[str], ids: list[str] | None = None) -> Prepared:
        cfg, lm = self.config, self.lm
        ctx = self.build_context(questions, ids, reserve=cfg.max_new_tokens)

        def finish(b: int, out: list[int]) -> Trace:
            text = lm.decode_text(out)
            return Trace(text, ctx.upstream[b] + [AgentTrace(ctx.agent, ctx.role, len(ctx.prompts[b]), text, len(out))])

        return Prepared(
            ctx.cache, ctx.last_hidden, ctx.agent, cfg.max_new_tokens, cfg.sampling(offset=ctx.sampling_offset), finish
        )

    def score(
        self, questions: list[str], continuations: list[str] | list[list[int]], ids: list[str] | None = None
    ) -> list[tuple[float, bool]]:
        """Per question: the answering agent's summed log-probability of its continuation (text,
        tokenised without special tokens, or token ids) read on top of the method's whole context,
        and whether greedy decoding would write it. An empty continuation scores (0.0, True).
        Call under ``torch.inference_mode()`` (or ``no_grad``), as :meth:`run`."""
        if len(continuations) != len(questions):
            raise DiffMASError(f"got {len(continuations)} continuations for {len(questions)} questions")
        tok = self.lm.tokenizer
        cont = [
            list(c) if not isinstance(c, str) else tok(c, add_special_tokens=False)["input_ids"] for c in continuations
        ]
        out: list[tuple[float, bool]] = [(0.0, True)] * len(questions)
        rows = [b for b, c in enumerate(cont) if c]
        if not rows:
            return out
        # Each distinct question's context is built once and its rows repeated for every
        # continuation it is asked about (a multiple-choice question's options).
        unique: dict[str, int] = {}  # question -> its row in the context
        firsts, reserve = [], []  # per distinct question: its first row, its longest continuation
        for b in rows:
            u = unique.setdefault(questions[b], len(unique))
            if u == len(firsts):
                firsts.append(b)
                reserve.append(0)
            reserve[u] = max(reserve[u], len(cont[b]))
        first_ids = None if ids is None else [ids[b] for b in firsts]
        ctx = self.build_context(list(unique), first_ids, reserve=reserve, reserve_what="the continuation")
        index = torch.tensor([unique[questions[b]] for b in rows])
        ctx.cache.select_rows(index)
        scores = continuation_scores(
            self.lm, ctx.cache, ctx.agent, ctx.last_hidden[index.to(ctx.last_hidden.device)], [cont[b] for b in rows]
        )
        for b, s in zip(rows, scores):
            out[b] = s
        return out

    def run(self, questions: list[str], ids: list[str] | None = None) -> list[Trace]:
        p = self.prepare(questions, ids)
        rows = decode_rows(self.lm, p.cache, p.agent, p.last_hidden, p.max_new_tokens, p.sampling)
        return [finished_trace(p.finish, b, row) for b, row in enumerate(rows)]

    def run_stream(
        self,
        questions: list[str],
        ids: list[str] | None = None,
        batch_size: int = 8,
        refill: float = 0.25,
        by_length: bool = False,
        cue: AnswerCue | None = None,
    ) -> Iterator[tuple[int, Trace]]:
        """Answer ``questions`` batch by batch, yielding (index, trace) as each answer finishes.

        When at most ``refill * batch_size`` answers are still being written, the next batch is
        prepared and its rows join the same decoding steps: a few long answers no longer run
        alone at batch size 1 (decoding is bound by reading the weights, so extra rows are
        nearly free). Greedy answers are the same as :meth:`run`'s.

        ``by_length``: batch the questions longest first instead of in the given order, so that
        each batch holds questions of about one length and its left-padded prefills compute few
        pad positions (``benchmarks/diagnostics/phase_times.py`` counts them).

        ``cue``: an :class:`AnswerCue` whose ``readable`` and ``choices`` take the index into
        ``questions`` as the row key;
        answers it cannot read are continued with the cue (their traces say ``answer_cued``).
        """
        if not 0 <= refill <= 1:
            raise DiffMASError(f"refill must be in [0, 1], got {refill}")
        ids = ids or [f"#{i}" for i in range(len(questions))]
        order = self.length_order(questions) if by_length else list(range(len(questions)))
        pool: DecodePool | None = None
        # The pool's row keys are (index, row, finish): the caller's check sees the index.
        pool_cue = (
            None
            if cue is None
            else replace(
                cue,
                readable=lambda key, text: cue.readable(key[0], text),
                choices=None if cue.choices is None else lambda key: cue.choices(key[0]),
            )
        )
        start = 0
        # Each decoding step's time, shared by the rows it ran, summed: a row's share of decoding
        # is how far this sum grew while it ran (cost[i] holds its preparation share minus the
        # sum when it joined), so a step costs no bookkeeping per row.
        per_row, cost = 0.0, {}
        while start < len(questions) or (pool is not None and len(pool)):
            # Traces with sliding-window layers cannot be merged: their batches take turns.
            joinable = pool is None or not len(pool) or (pool.cache.mergeable and len(pool) <= refill * batch_size)
            if start < len(questions) and joinable:
                batch = order[start : start + batch_size]
                t0 = _clock()
                p = self.prepare([questions[i] for i in batch], [ids[i] for i in batch])
                pool = pool or DecodePool(self.lm, p.agent, p.sampling, pool_cue)
                keys = [(i, b, p.finish) for b, i in enumerate(batch)]
                pool.add(p.cache, p.last_hidden, p.max_new_tokens, keys)
                share = (_clock() - t0) / len(batch)
                cost.update((i, share - per_row) for i in batch)
                start += len(batch)
                continue
            running, t0 = len(pool), _clock()
            finished = pool.step()
            per_row += (_clock() - t0) / running
            for done in finished:
                index, row, finish = done.key
                trace = finished_trace(finish, row, done)
                trace.seconds = cost.pop(index) + per_row
                yield index, trace

    def length_order(self, questions: list[str]) -> list[int]:
        """Indices of ``questions``, longest (in tokens) first; ties keep the given order."""
        if not questions:  # a resumed run with nothing left to do (the tokenizer rejects an empty batch)
            return []
        lengths = [len(ids) for ids in self.lm.tokenizer(questions, add_special_tokens=False)["input_ids"]]
        return sorted(range(len(questions)), key=lambda i: -lengths[i])

    def check_fits(self, ids: list[str] | None, needed: list[int], what: str) -> None:
        """Raise a clear error if a problem needs more positions than the model has."""
        for i, n in enumerate(needed):
            if n > self.lm.max_positions:
                name = ids[i] if ids else f"#{i}"
                raise ContextLengthError(
                    f"example {name}: {what} needs {n} positions but the model's context is "
                    f"{self.lm.max_positions}; shorten the question, lower --max-new-tokens"
                    " / --agent-max-new-tokens / --latent-steps, or use a model with a longer context"
                )
