"""Attention of short queries on CPU as plain matrix products, registered with transformers.

Latent steps and decoding run attention with one query token per row over the whole shared
trace. PyTorch's fused CPU attention kernel is slow for that shape, more so the longer the trace
and the larger the batch (docs/performance.md; ``benchmarks/step_costs.py`` measures it).
This module registers ``"diffmas_cpu"`` with ``AttentionInterface`` (the masks are transformers'
own SDPA masks) and sends those calls through plain matrix products in float32; everything else
(prefills, calls with gradients, masks it does not understand, soft-capping, sinks, dropout)
goes to transformers' SDPA function unchanged.

Grouped-query attention is done by folding the query heads of a group into the query axis,
so keys and values are never repeated per head.
"""

from __future__ import annotations

import functools

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "diffmas_cpu"
# Queries of at most this many tokens (decode and latent steps) take the matrix-product path,
# and only without gradients. Longer ones stay on the fused kernel: in float32 the products cost
# more than the kernel saves. Training stays on it too: with gradients the products were slower
# than the fused kernel (docs/performance.md).
SHORT_QUERY = 16


def autocast_off(fn):
    """Run ``fn`` with CPU autocast off when it is on (mixed-precision training), so that its
    float32 sums stay float32. Checked first: this runs per layer and decode step, and the check
    is cheaper than entering autocast's context."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not torch.is_autocast_enabled("cpu"):
            return fn(*args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return run


@autocast_off
def _matmul_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """query (B, Hq, T, D), key/value (B, Hk, L, D), mask bool (B or 1, 1, T, L), True = attend.

    Returns (B, T, Hq, D) in the query's dtype, as transformers' attention functions do.
    """
    b, hq, t, d = query.shape
    hk, length = key.shape[1], key.shape[2]
    group = hq // hk
    # (B, Hk, group*T, D): the `group` query heads sharing key head h are rows of one product.
    q = query.reshape(b, hk, group * t, d).float()
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * scaling  # (B, Hk, group*T, L)
    scores = scores.view(b, hk, group, t, length)
    # A finite fill, not -inf: a query row with no visible key (a left pad) then gets uniform
    # weights instead of NaN; its output is never read, and NaN would leak through 0 * NaN later.
    scores = scores.masked_fill(~mask[:, :, None], torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1).view(b, hk, group * t, length)
    out = torch.matmul(probs, value.float())  # (B, Hk, group*T, D)
    return out.view(b, hq, t, d).transpose(1, 2).contiguous().to(query.dtype)


def diffmas_cpu_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Drop-in for transformers' ``sdpa_attention_forward`` (same arguments and return)."""
    usable = (
        isinstance(attention_mask, torch.Tensor)
        and attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4
        and attention_mask.shape[-1] == key.shape[2]
        and dropout == 0.0
        and kwargs.get("softcap") is None
        and kwargs.get("s_aux") is None
        and kwargs.get("sinks") is None
        and kwargs.get("position_bias") is None
        and kwargs.get("cache") is None  # a paged cache is updated inside SDPA's function
        and query.shape[1] % key.shape[1] == 0
        and query.shape[2] <= SHORT_QUERY
        and not torch.is_grad_enabled()
    )
    if not usable:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return _matmul_attention(query, key, value, attention_mask, scale), None


def _mask(*args, **kwargs):
    # Short queries always get a full boolean mask: the causal shortcut (mask None) would send an
    # unpadded decode step back to the fused kernel. Long ones keep SDPA's own behaviour.
    q_length = kwargs["q_length"] if "q_length" in kwargs else args[1]
    if q_length <= SHORT_QUERY:
        kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(NAME, diffmas_cpu_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, _mask)


def use_cpu_attention(model: torch.nn.Module) -> bool:
    """Route ``model``'s SDPA attention through :func:`diffmas_cpu_attention`. Returns whether it
    did: models on another implementation (eager, flash, flex) are left alone."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(NAME)
    return config._attn_implementation == NAME
