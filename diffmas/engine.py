"""A thin wrapper around a Hugging Face causal LM for running agents on a shared KV trace.

We do not fork the model: the wrapper calls the model's own decoder (which returns hidden states
and never touches the output head) and applies the output head only where logits are needed: on
the last position of a prompt that is followed by decoding, and on each decoded token. Latent
steps therefore cost no head at all (for Qwen2.5-0.5B the head is 136M of 494M parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from diffmas.cache import SharedKVCache
from diffmas.config import option
from diffmas.errors import DiffMASError
from diffmas.models import stop_token_ids


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
            raise DiffMASError(f"stop_loops must be 0 (off) or at least {MIN_LOOP_WINDOW} tokens, "
                               f"got {self.stop_loops}")


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


@dataclass
class ModelConfig:
    """Which model to load and how: shared by evaluation, `run` and training configs."""

    model: str = option("qwen2.5-coder-0.5b-instruct", "registry name, Hugging Face id or local directory")
    dtype: str = option("bfloat16", "bfloat16 | float32 | float16 | auto")
    device: str = option("cpu", "torch device")
    cache_dir: str | None = option(None, "where de-quantised offline models are cached")
    packed: bool = option(True, "CPU: linear layers on oneDNN-prepacked weights, q/k/v and gate/up as one "
                          "product each (same results, about 1.5x faster matrix products at decoding sizes, one "
                          "extra copy of the weights in memory); in training, the frozen base's products too "
                          "(a second copy, transposed, for the backward pass)")
    cpu_attention: bool = option(True, "CPU: queries of at most 16 tokens (decoding, latent steps) attend "
                                 "through plain matrix products instead of the fused SDPA kernel (float32: "
                                 "identical results; 2-3x faster steps at batch 8-16 over long traces)")
    batch_invariant: bool = option(False, "CPU: bit-identical results for a row whatever the batch size, in "
                                   "bfloat16 too (attention whose sums follow each row's own keys: slower "
                                   "batched steps)")

    def load_lm(self, device: str | None = None) -> "LM":
        from diffmas.models import load_model

        model, tokenizer = load_model(self.model, dtype=self.dtype, device=device or self.device,
                                      cache_dir=self.cache_dir, packed=self.packed,
                                      cpu_attention=self.cpu_attention, batch_invariant=self.batch_invariant)
        return LM(model, tokenizer, name=self.model)


class LM:
    """A causal LM seen as a decoder (hidden states) plus an output head (logits on demand)."""

    def __init__(self, model, tokenizer, name: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        # What the user called the model (registry name, directory, hub id): shown in messages
        # and recorded in training checkpoints.
        self.name = name or getattr(model.config, "name_or_path", "") or type(model).__name__
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        text_config = model.config.get_text_config()
        self.softcap = getattr(text_config, "final_logit_softcapping", None)
        self.max_positions = int(getattr(text_config, "max_position_embeddings", 1 << 30))
        self.stop_ids = torch.tensor(stop_token_ids(tokenizer, model), dtype=torch.long)
        # Called with the agent's name before every forward pass on its behalf, so that per-agent
        # state (the active LoRA adapter, see diffmas.train.adapters) follows the agent that
        # writes each column of the trace. None: one model for every agent.
        self.agent_hook: Callable[[str], None] | None = None
        # Traces append into spare capacity (diffmas.cache.GrowingLayer); False: transformers'
        # DynamicLayer, which copies the whole trace at every append (benchmarks/step_costs.py).
        self.growing_cache = True
        if tokenizer.pad_token_id is not None:
            self.pad_id = tokenizer.pad_token_id
        elif len(self.stop_ids):
            self.pad_id = int(self.stop_ids[0])
        else:
            self.pad_id = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def new_cache(self, batch_size: int) -> SharedKVCache:
        return SharedKVCache(batch_size, self.device, config=self.model.config, growing=self.growing_cache)

    # -- text <-> ids ---------------------------------------------------------------------
    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat prompt ending where the assistant's answer begins."""
        if getattr(self.tokenizer, "chat_template", None):
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(out, dict) or hasattr(out, "input_ids"):  # BatchEncoding in some versions
                out = out["input_ids"]
            return list(out)
        # Base models without a template: a plain transcript.
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- forward passes ---------------------------------------------------------------------
    def forward_states(
        self,
        cache: SharedKVCache,
        agent: str,
        kind: str,
        new_real: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Append T columns to the trace on behalf of ``agent``; return their (B, T, d) final
        hidden states. ``new_real`` is the (B, T) real-token mask of the new columns."""
        if self.agent_hook is not None:
            self.agent_hook(agent)
        new_real = new_real.to(cache.device)
        out = self.decoder(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=cache.attention_mask(new_real),
            position_ids=cache.position_ids(new_real),
            past_key_values=cache.kv,
            use_cache=True,
        )
        cache.append(agent, kind, new_real)
        return out.last_hidden_state

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """:meth:`forward_states` (same arguments), returning only the last column's (B, d) state.

        ``new_real`` is the (B, T) real-token mask of the new columns. Callers left-pad, so the
        last column is real in every row and its hidden state is never a pad's.
        """
        return self.forward_states(*args, **kwargs)[:, -1, :]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, d) hidden states -> (B, V) float32 logits."""
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def prefill(self, cache: SharedKVCache, agent: str, prompts: list[list[int]]) -> torch.Tensor:
        """Left-pad a batch of prompts into one segment of the trace; return (B, d) last hidden."""
        if len(prompts) != cache.batch_size:
            raise ValueError(f"got {len(prompts)} prompts for a batch of {cache.batch_size}")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        real = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            if p:
                ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                real[i, width - len(p):] = 1
        return self.forward(cache, agent, "prompt", real, input_ids=ids.to(self.device))

    def _choose(self, logits: torch.Tensor, sampling: Sampling, gen: torch.Generator | None) -> torch.Tensor:
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

    def decode(
        self,
        cache: SharedKVCache,
        agent: str,
        last_hidden: torch.Tensor,
        max_new_tokens: int,
        sampling: Sampling | None = None,
    ) -> list[list[int]]:
        """Generate up to ``max_new_tokens`` per row after the trace; return the ids per row (the
        stop token included when one was produced).

        Rows that finish are dropped from the cache (it ends with only the rows still running at
        the last step), so a batch costs what its unfinished rows cost, not what its longest row
        costs times the batch size. Decoding is always the last thing done with a trace.
        """
        pool = DecodePool(self, agent, sampling)
        pool.add(cache, last_hidden, max_new_tokens, list(range(cache.batch_size)))
        out: list[list[int]] = [[] for _ in range(cache.batch_size)]
        while len(pool):
            for row, ids, *_ in pool.step():
                out[row] = ids
        return out


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
    """A row that finished decoding: its key, its ids (the stop token included when one ended it)
    and, when its answer was cued (see :class:`AnswerCue`), where in ``ids`` the cue starts and
    how many of the ids were fed by the cue rather than chosen by the model."""

    key: object
    ids: list[int]
    cue_at: int | None = None
    cue_tokens: int = 0


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
        self.gen = torch.Generator(device="cpu").manual_seed(self.sampling.seed) if self.sampling.temperature > 0 \
            else None
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

    def step(self) -> list[Finished]:
        """Choose the next token of every running row; return the rows that finished."""
        if not len(self):
            return []
        lm, sampling = self.lm, self.sampling
        logits = lm.logits(self.hidden).cpu()
        early = [k for k, o in enumerate(self.out) if len(o) < sampling.min_new_tokens]
        if early and self.stop:
            logits[torch.tensor(early)[:, None], lm.stop_ids[None, :]] = float("-inf")
        self._limit_to_choices(logits)
        chosen = lm._choose(logits, sampling, self.gen).tolist()
        keep, done = [], []
        for k, token in enumerate(chosen):
            if self.feed[k]:
                chosen[k] = self.feed[k].pop(0)
                self.out[k].append(chosen[k])
                keep.append(k)
                continue
            self.out[k].append(token)
            finished = (token in self.stop or len(self.out[k]) >= self.budget[k]
                        or (sampling.stop_loops > 0 and looping(self.out[k], sampling.stop_loops)))
            if self.cue_at[k] is not None:
                if self.choices[k]:  # the choice is the answer: close its brace, nothing more to decode
                    self.out[k] += self.cue.close_ids
                    finished = True
                else:  # a free answer ends as soon as it closes the cue's brace
                    after = self.out[k][self.cue_at[k] + len(self.cue.ids):]
                    finished = finished or self.cue.closed(self.lm.decode_text(after))
            elif finished and self._start_cue(k, chosen):
                finished = False
            (done if finished else keep).append(k)
        finished = [Finished(self.keys[k], self.out[k], self.cue_at[k], self._cue_tokens(k)) for k in done]
        nxt = torch.tensor(chosen)
        if done:
            for name in ("keys", "out", "budget", "feed", "cue_at", "choices"):
                setattr(self, name, [getattr(self, name)[k] for k in keep])
            if not keep:
                self.cache = self.hidden = None
                return finished
            rows = torch.tensor(keep)
            self.cache.select_rows(rows)
            nxt = nxt[rows]
        ones = torch.ones(len(nxt), 1, dtype=torch.long)
        self.hidden = lm.forward(self.cache, self.agent, "text", ones, input_ids=nxt[:, None].to(lm.device))
        return finished

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
        if len(self.cache) + len(cue.ids) + cue.max_new_tokens + 1 > self.lm.max_positions or \
                cue.readable(self.keys[k], self.lm.decode_text(text_ids)):
            return False
        if stopped:
            out.pop()
            chosen[k] = cue.ids[0]
            out.append(chosen[k])
            self.feed[k] = list(cue.ids[1:])
            self.cue_at[k] = len(out) - 1
        else:  # the last token chosen is fed now, the cue after it
            self.feed[k] = list(cue.ids)
            self.cue_at[k] = len(out)
        self.budget[k] = self.cue_at[k] + len(cue.ids) + cue.max_new_tokens
        self.choices[k] = cue.choices(self.keys[k]) if cue.choices is not None else None
        return True
