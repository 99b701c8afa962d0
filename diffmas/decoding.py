"""Decoding on a shared trace: how tokens are chosen, when a row stops, and the decode pool.

:func:`decode` writes the text that ends a trace (the answering agent's, or an intermediate text
agent's); :class:`DecodePool` is the loop behind it, in which rows of several batches decode side
by side (continuous batching) and leave as soon as they finish. :class:`AnswerCue` continues an
answer from which nothing can be read. All of it runs on :class:`~diffmas.engine.LM`'s forward
passes; the model wrapper itself knows nothing of sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from diffmas.engine import LM
from diffmas.errors import DiffMASError
from diffmas.kv_trace import SharedKVCache


@dataclass
class Sampling:
    """How the next token is chosen. ``temperature == 0`` means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    min_new_tokens: int = 0  # stop tokens are forbidden before this many tokens
    stop_loops: int = 0  # > 0: a row stops once its last stop_loops tokens are one block repeated (see looping)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise DiffMASError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DiffMASError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.stop_loops and self.stop_loops < MIN_LOOP_WINDOW:
            raise DiffMASError(
                f"stop_loops must be 0 (off) or at least {MIN_LOOP_WINDOW} tokens, got {self.stop_loops}"
            )


# Shorter windows would stop on ordinary text (a number like 100000 is a 1-token block repeated).
MIN_LOOP_WINDOW = 16


def looping(ids: list[int], window: int) -> bool:
    """Whether the last ``window`` ids are one block of at most ``window // 4`` ids repeated, i.e.
    the same block at least four times in a row: a greedy decoder caught in a loop, which would
    otherwise run to its token budget ("IN IN IN ...")."""
    if len(ids) < window:
        return False
    tail = ids[-window:]
    # Period p: every id equals the one p places before it, all through the window.
    return any(tail[p:] == tail[:-p] for p in range(1, window // 4 + 1))


def choose(logits: torch.Tensor, sampling: Sampling, gen: torch.Generator | None) -> torch.Tensor:
    """(R, V) float32 logits -> (R,) chosen token ids: greedy, or sampled with temperature and top-p."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop = sorted_p.cumsum(-1) - sorted_p > sampling.top_p
        sorted_p = sorted_p.masked_fill(drop, 0)
        pick = torch.multinomial(sorted_p, 1, generator=gen).squeeze(-1)
        return order.gather(-1, pick[:, None]).squeeze(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def decode_rows(
    lm: LM,
    cache: SharedKVCache,
    agent: str,
    last_hidden: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling | None = None,
) -> list[Finished]:
    """Generate up to ``max_new_tokens`` per row after the trace; return each row's
    :class:`Finished` (keyed by its row index), in row order.

    Rows that finish are dropped from the cache (it ends with only the rows still running at
    the last step), so a batch costs what its unfinished rows cost, not what its longest row
    costs times the batch size. Decoding is always the last thing done with a trace.
    """
    pool = DecodePool(lm, agent, sampling)
    pool.add(cache, last_hidden, max_new_tokens, list(range(cache.batch_size)))
    out: list[Finished | None] = [None] * cache.batch_size
    while len(pool):
        for finished in pool.step():
            out[finished.key] = finished
    return out


def decode(
    lm: LM,
    cache: SharedKVCache,
    agent: str,
    last_hidden: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling | None = None,
) -> list[list[int]]:
    """:func:`decode_rows`' ids per row (the stop token included when one was produced)."""
    return [f.ids for f in decode_rows(lm, cache, agent, last_hidden, max_new_tokens, sampling)]


@dataclass
class AnswerCue:
    """What to do when an answer has ended and no answer can be read from it.

    Zero-shot chain of thought's second step (Kojima et al., 2022): the row's text is continued
    with a cue that opens the answer ("Therefore, the final answer is \\boxed{") and the model
    finishes the sentence in a few tokens, on top of everything it (and, in a latent system, the
    agents before it) wrote. An answer that ran into its token budget, fell into a loop or ended
    without naming an option still gets one, computed from the same trace. A stop token that
    ended the unreadable answer is dropped: the cue continues the answer, not a new turn.
    """

    text: str  # ends inside an open brace, "... \\boxed{": the model's answer closes it
    ids: list[int]  # the cue's token ids
    readable: Callable[[object, str], bool]  # (row key, text so far) -> whether an answer can be read
    max_new_tokens: int = 16  # budget of the model's tokens after the cue
    # (row key) -> one token id per valid answer (a multiple-choice question's option letters), or
    # None: the model writes the answer freely. With choices the answer is the likeliest of them,
    # followed by ``close_ids``: an untrained latent judger, cued, still wrote "\\boxed{A).The
    # letterofthecorrectoption..." or "\\boxed{\n\nStep", leaving the box open.
    choices: Callable[[object], list[int] | None] | None = None
    close_ids: list[int] = field(default_factory=list)  # ids of "}", which closes a chosen answer

    def __post_init__(self) -> None:
        if not self.ids or not self.text.endswith("{"):
            raise DiffMASError(f"an answer cue must end with an open brace, e.g. '\\boxed{{', got {self.text!r}")
        if self.choices is not None and not self.close_ids:
            raise DiffMASError("an answer cue with choices needs close_ids (the ids of '}')")
        if self.max_new_tokens < 1:
            raise DiffMASError(f"the answer cue's max_new_tokens must be at least 1, got {self.max_new_tokens}")

    def closed(self, continuation: str) -> bool:
        """Whether the model's text after the cue closes the cue's brace. Not "once an answer can
        be read": an extractor reads "\\boxed{4" as 4 one token before "\\boxed{42}" is written."""
        depth = 1
        for ch in continuation:
            depth += (ch == "{") - (ch == "}")
            if depth == 0:
                return True
        return False


class Finished(NamedTuple):
    """A row that finished decoding: its key, its ids (the stop token included when one ended it),
    when its answer was cued (see :class:`AnswerCue`) where in ``ids`` the cue starts and how many
    of the ids were fed by the cue rather than chosen by the model, and the summed log-probability
    of the ``scored`` tokens the model chose, under its own distribution (temperature 1, before
    top-p or any forbidden token): what :attr:`perplexity` is made of."""

    key: object
    ids: list[int]
    cue_at: int | None = None
    cue_tokens: int = 0
    logprob: float = 0.0
    scored: int = 0

    @property
    def perplexity(self) -> float | None:
        """exp(-mean log-probability) of the chosen tokens: 1 for a model certain of each token."""
        return math.exp(-self.logprob / self.scored) if self.scored else None


class DecodePool:
    """Rows decoding one token per step, possibly from several batches (continuous batching).

    Rows leave as soon as they finish; the rows of another batch can join between any two steps
    (:meth:`add`), so a long answer does not keep a nearly empty batch running on its own. Each row
    has a caller-chosen key, returned with its tokens when it finishes. Greedy answers do not depend
    on which rows share a step; sampled ones draw from one generator, so they do.
    """

    def __init__(self, lm: LM, agent: str, sampling: Sampling | None = None, cue: AnswerCue | None = None):
        self.lm, self.agent, self.cue = lm, agent, cue
        self.sampling = sampling or Sampling()
        self.gen = (
            torch.Generator(device="cpu").manual_seed(self.sampling.seed) if self.sampling.temperature > 0 else None
        )
        self.stop = set(lm.stop_ids.tolist())
        self.cache: SharedKVCache | None = None
        self.hidden: torch.Tensor | None = None  # (R, d): last hidden state of each running row
        # Per running row, in the cache's row order:
        self.keys: list = []
        self.out: list[list[int]] = []
        self.budget: list[int] = []
        self.feed: list[list[int]] = []  # cue tokens still to be fed (the model's choice is ignored meanwhile)
        self.cue_at: list[int | None] = []  # where in out the cue starts; None: not cued
        self.choices: list[list[int] | None] = []  # a cued row's valid answers (AnswerCue.choices)
        self.logp: list[list[float | None]] = []  # per id of out: its log-probability if the model chose it

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, cache: SharedKVCache, last_hidden: torch.Tensor, max_new_tokens: int, keys: list) -> None:
        """Let the rows of ``cache`` (their (B, d) last hidden states, one key each) join."""
        if len(keys) != cache.batch_size or last_hidden.shape[0] != cache.batch_size:
            raise ValueError(f"{len(keys)} keys and {last_hidden.shape[0]} hidden states for {cache.batch_size} rows")
        if self.cache is None or not len(self):
            self.cache, self.hidden = cache, last_hidden
        else:
            self.cache.add_rows(cache)
            self.hidden = torch.cat([self.hidden, last_hidden])
        self.keys += list(keys)
        self.out += [[] for _ in keys]
        self.budget += [max_new_tokens] * len(keys)
        self.feed += [[] for _ in keys]
        self.cue_at += [None] * len(keys)
        self.choices += [None] * len(keys)
        self.logp += [[] for _ in keys]

    def step(self) -> list[Finished]:
        """Choose the next token of every running row; return the rows that finished."""
        if not len(self):
            return []
        lm, sampling = self.lm, self.sampling
        logits = lm.logits(self.hidden).cpu()
        norm = logits.logsumexp(dim=-1)  # (R,): the model's own distribution, before any token is forbidden
        early = [k for k, o in enumerate(self.out) if len(o) < sampling.min_new_tokens]
        if early and self.stop:
            logits[torch.tensor(early)[:, None], lm.stop_ids[None, :]] = float("-inf")
        self._limit_to_choices(logits)
        picked = choose(logits, sampling, self.gen)
        # A chosen token is never a forbidden one, so its masked logit is its raw logit.
        logps = (logits.gather(1, picked[:, None]).squeeze(1) - norm).tolist()
        chosen = picked.tolist()
        keep, done = [], []
        for k, token in enumerate(chosen):
            if self.feed[k]:
                chosen[k] = self.feed[k].pop(0)
                self.out[k].append(chosen[k])
                self.logp[k].append(None)
                keep.append(k)
                continue
            self.out[k].append(token)
            self.logp[k].append(logps[k])
            finished = (
                token in self.stop
                or len(self.out[k]) >= self.budget[k]
                or (sampling.stop_loops > 0 and looping(self.out[k], sampling.stop_loops))
            )
            if self.cue_at[k] is not None:
                if self.choices[k]:  # the choice is the answer: close its brace, nothing more to decode
                    self.out[k] += self.cue.close_ids
                    self.logp[k] += [None] * len(self.cue.close_ids)
                    finished = True
                else:  # a free answer ends as soon as it closes the cue's brace
                    after = self.out[k][self.cue_at[k] + len(self.cue.ids) :]
                    finished = finished or self.cue.closed(self.lm.decode_text(after))
            elif finished and self._start_cue(k, chosen):
                finished = False
            (done if finished else keep).append(k)
        finished = [self._finished(k) for k in done]
        nxt = torch.tensor(chosen)
        if done:
            for name in ("keys", "out", "budget", "feed", "cue_at", "choices", "logp"):
                setattr(self, name, [getattr(self, name)[k] for k in keep])
            if not keep:
                self.cache = self.hidden = None
                return finished
            rows = torch.tensor(keep)
            self.cache.select_rows(rows)
            self.cache.drop_leading_pads()
            nxt = nxt[rows]
        ones = torch.ones(len(nxt), 1, dtype=torch.long)
        self.hidden = lm.forward(self.cache, self.agent, "text", ones, input_ids=nxt[:, None].to(lm.device))
        return finished

    def _finished(self, k: int) -> Finished:
        scored = [v for v in self.logp[k] if v is not None]
        return Finished(self.keys[k], self.out[k], self.cue_at[k], self._cue_tokens(k), sum(scored), len(scored))

    def _cue_tokens(self, k: int) -> int:
        if self.cue_at[k] is None:
            return 0
        return len(self.cue.ids) + (len(self.cue.close_ids) if self.choices[k] else 0)

    def _limit_to_choices(self, logits: torch.Tensor) -> None:
        """(R, V) logits: a row with choices that has just been fed the whole cue picks among them."""
        if self.cue is None or self.cue.choices is None:  # every decode step comes here: leave at once
            return
        for k, allowed in enumerate(self.choices):
            if allowed and not self.feed[k] and len(self.out[k]) == self.cue_at[k] + len(self.cue.ids):
                keep = logits[k, allowed].clone()
                logits[k] = float("-inf")
                logits[k, allowed] = keep

    def _start_cue(self, k: int, chosen: list[int]) -> bool:
        """Row ``k`` just ended: if no answer can be read from it, cue one (see :class:`AnswerCue`)
        and return True. ``chosen[k]``, the token fed next, becomes the cue's first token when
        the row ended on a stop token (which is dropped)."""
        cue, out = self.cue, self.out[k]
        if cue is None:
            return False
        stopped = out[-1] in self.stop
        text_ids = out[:-1] if stopped else out
        # The cache holds one column per token so far; the cue and its answer must still fit.
        if len(self.cache) + len(cue.ids) + cue.max_new_tokens + 1 > self.lm.max_positions or cue.readable(
            self.keys[k], self.lm.decode_text(text_ids)
        ):
            return False
        if stopped:  # the stop token gives way to the cue's first token, fed, not chosen
            out.pop()
            chosen[k] = cue.ids[0]
            out.append(chosen[k])
            self.logp[k][-1] = None
            self.feed[k] = list(cue.ids[1:])
            self.cue_at[k] = len(out) - 1
        else:  # the last token chosen is fed now, the cue after it
            self.feed[k] = list(cue.ids)
            self.cue_at[k] = len(out)
        self.budget[k] = self.cue_at[k] + len(cue.ids) + cue.max_new_tokens
        self.choices[k] = cue.choices(self.keys[k]) if cue.choices is not None else None
        return True
