"""A thin wrapper around a Hugging Face causal LM for running agents on a shared KV trace.

We do not fork the model: the wrapper calls the model's own decoder (which returns hidden states
and never touches the output head) and applies the output head only where logits are needed: on
the last position of a prompt that is followed by decoding, and on each decoded token. Latent
steps therefore cost no head at all (for Qwen2.5-0.5B the head is 136M of 494M parameters).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffmas.config import option
from diffmas.kv_trace import SharedKVCache
from diffmas.models import stop_token_ids
from diffmas.models.registry import DEFAULT_MODEL


@dataclass
class ModelConfig:
    """Which model to load and how: shared by evaluation, `run` and training configs."""

    model: str = option(DEFAULT_MODEL, "registry name, Hugging Face id or local directory")
    dtype: str = option("bfloat16", "bfloat16 | float32 | float16 | auto")
    device: str = option("cpu", "torch device")
    cache_dir: str | None = option(None, "where de-quantised offline models are cached")
    packed: bool = option(
        True,
        "CPU: linear layers on oneDNN-prepacked weights, q/k/v and gate/up as one "
        "product each (same results, faster products at decoding sizes, one extra copy of the "
        "weights in memory); in training, the frozen base's products too (a second copy, "
        "transposed, for the backward pass)",
    )
    cpu_attention: bool = option(
        True,
        "CPU: queries of at most 16 tokens (decoding, latent steps) attend "
        "through plain matrix products instead of the fused SDPA kernel (float32: "
        "identical results; faster steps over long traces)",
    )
    batch_invariant: bool = option(
        False,
        "CPU: bit-identical results for a row whatever the batch size, in "
        "bfloat16 too (attention whose sums follow each row's own keys: slower "
        "batched steps)",
    )

    def load_lm(self, device: str | None = None) -> LM:
        from diffmas.models import load_model

        model, tokenizer = load_model(
            self.model,
            dtype=self.dtype,
            device=device or self.device,
            cache_dir=self.cache_dir,
            packed=self.packed,
            cpu_attention=self.cpu_attention,
            batch_invariant=self.batch_invariant,
        )
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
        # transformers 5.x renamed the decoder's cache argument (past_key_values goes in 5.40).
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"
        )
        self.head = model.get_output_embeddings()
        text_config = model.config.get_text_config()
        self.softcap = getattr(text_config, "final_logit_softcapping", None)
        self.max_positions = int(getattr(text_config, "max_position_embeddings", 1 << 30))
        self.stop_ids = torch.tensor(stop_token_ids(tokenizer, model), dtype=torch.long)
        # Called with the agent's name before every forward pass on its behalf, so that per-agent
        # state (the active LoRA adapter, see diffmas.adapters) follows the agent that
        # writes each column of the trace. None: one model for every agent.
        self.agent_hook: Callable[[str], None] | None = None
        # Traces append into spare capacity (diffmas.kv_trace.GrowingLayer); False: transformers'
        # DynamicLayer, which copies the whole trace at every append (docs/performance.md).
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
            use_cache=True,
            **{self._cache_arg: cache.kv},
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
                ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                real[i, width - len(p) :] = 1
        return self.forward(cache, agent, "prompt", real, input_ids=ids.to(self.device))
