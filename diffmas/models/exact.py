"""Batch-invariant inference on CPU: a row's results do not depend on the batch it is in.

With left padding, masks over pads and real-token position ids, a row's outputs are the same at
any batch size in exact arithmetic, and in float32 the greedy outputs agree (docs/RESULTS.md). In
bfloat16 they drift: the kernels round a row differently depending on the shapes around it, and a
greedy continuation that meets a near-tie goes another way. Two kinds of kernel do this here:

- **Matrix products whose row count changes the kernel.** oneDNN's bfloat16 product of a single
  row takes another path than two rows or more (only some shapes round differently, e.g. the
  4864-wide MLP input of Qwen2.5-0.5B), and MKL's float32 one changes path below four rows; from
  there up, each row's result is the same whatever the number of rows (checked up to 8,000). So a
  product of fewer than :data:`MIN_ROWS` rows runs on its rows plus copies of the first one
  (:func:`at_least_rows`), and a batch-1 decode step is computed the way a batch-16 one is.
- **Attention over a padded trace.** Reductions over the key axis (softmax sums, probabilities
  times values) are blocked by position, so pads before a row's keys change the order in which
  its terms are added. :func:`per_row_attention` gathers each row's visible keys and real queries
  and runs the attention kernel on that row alone: the very call, with the very shapes and
  values, that the row would get in a batch of one.

The price is a Python loop over rows in every attention call (measured in
benchmarks/step_costs.py and docs/PERFORMANCE.md); the option is off by default
(``--batch-invariant``). Calls with gradients (training) keep the batched path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from diffmas.models.attention import NAME as CPU_NAME
from diffmas.models.attention import diffmas_cpu_attention

# Products of fewer rows than this are padded to it: MKL's float32 kernel switches path below 4.
MIN_ROWS = 4


def at_least_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int = MIN_ROWS) -> torch.Tensor:
    """``fn(x)`` for a row-wise product ``fn`` (..., k) -> (..., m), computed on at least ``n`` rows:
    fewer are padded with copies of the first, whose results are dropped."""
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    if rows >= n or rows == 0:
        return fn(x)
    flat = x.reshape(rows, k)
    y = fn(torch.cat([flat, flat[:1].expand(n - rows, k)]))[:rows]
    return y.reshape(*x.shape[:-1], y.shape[-1])


class _RowPlan:
    """Which keys and queries of each row are real, worked out once per mask: every layer of a
    forward pass gets the same mask tensor."""

    def __init__(self, mask: torch.Tensor, batch: int, q_len: int):
        # mask: bool (B or 1, 1, T, L), True = attend. A key is the row's if some query sees it:
        # pads are masked for every query. A new column is a real query iff its key is the row's.
        visible = mask[:, 0].any(dim=1).expand(batch, -1)  # (B, L)
        real_q = visible[:, visible.shape[1] - q_len:]  # (B, T)
        self.mask = mask
        self.rows = []
        for i in range(batch):
            keys = visible[i].nonzero().squeeze(1)
            queries = real_q[i].nonzero().squeeze(1)
            row_mask = mask[min(i, mask.shape[0] - 1), :, queries][:, :, keys][None]  # (1, 1, t_i, l_i)
            self.rows.append((queries, keys, row_mask))


_plans = threading.local()


def _plan(mask: torch.Tensor, batch: int, q_len: int) -> _RowPlan:
    plan = getattr(_plans, "last", None)
    if plan is None or plan.mask is not mask:
        plan = _RowPlan(mask, batch, q_len)
        _plans.last = plan  # holds the mask (and so its id) alive until the next one replaces it
    return plan


def per_row_attention(inner: Callable) -> Callable:
    """An attention function (transformers' signature) that runs ``inner`` one row at a time on
    that row's real queries and keys; without gradients and with a boolean 4-D mask only."""

    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs) -> tuple[torch.Tensor, None]:
        b, _, t, _ = query.shape  # query (B, Hq, T, D); key, value (B, Hk, L, D)
        if (torch.is_grad_enabled() or not isinstance(attention_mask, torch.Tensor)
                or attention_mask.dtype != torch.bool or attention_mask.dim() != 4
                or attention_mask.shape[-1] != key.shape[2] or attention_mask.shape[-2] != t):
            return inner(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        out = query.new_zeros(b, t, query.shape[1], query.shape[3])  # (B, T, Hq, D); pads' rows stay 0
        for i, (queries, keys, row_mask) in enumerate(_plan(attention_mask, b, t).rows):
            if not len(queries):
                continue
            row_out, _ = inner(module, query[i:i + 1].index_select(2, queries), key[i:i + 1].index_select(2, keys),
                               value[i:i + 1].index_select(2, keys), row_mask, dropout=dropout, scaling=scaling,
                               **kwargs)
            out[i, queries] = row_out[0]
        return out, None

    return attention


def _full_mask(*args, **kwargs):
    # Always a boolean mask, never the causal shortcut (None): rows are cut out of it.
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


# Exact variants of the two implementations this project runs on CPU.
EXACT = {CPU_NAME: "diffmas_cpu_exact", "sdpa": "sdpa_exact"}
AttentionInterface.register(EXACT[CPU_NAME], per_row_attention(diffmas_cpu_attention))
AttentionInterface.register(EXACT["sdpa"], per_row_attention(sdpa_attention_forward))
for _name in EXACT.values():
    ALL_MASK_ATTENTION_FUNCTIONS.register(_name, _full_mask)


def is_batch_invariant(model: nn.Module) -> bool:
    return getattr(model.config, "_attn_implementation", None) in EXACT.values()


def make_batch_invariant(model: nn.Module, on: bool = True) -> None:
    """Make ``model``'s inference batch-invariant (see the module's docstring), or with ``on=False``
    undo it. Its attention must be SDPA or :mod:`diffmas.models.attention`'s; its linear layers
    become :class:`~diffmas.models.packed.PackedLinear` if they are not (products of few rows padded)."""
    from diffmas.errors import DiffMASError
    from diffmas.models.packed import PackedLinear, make_packed

    current = getattr(model.config, "_attn_implementation", None)
    plain = {exact: name for name, exact in EXACT.items()}.get(current, current)
    if plain not in EXACT:
        raise DiffMASError(f"batch-invariant inference needs SDPA attention; this model uses {current!r} "
                           "(load it with attn_implementation='sdpa')")
    target = EXACT[plain] if on else plain
    if current != target:
        model.set_attn_implementation(target)
    for module in model.modules():
        if on and type(module) is nn.Linear:
            make_packed(module, pack=False)
        if isinstance(module, PackedLinear):
            module._min_rows = MIN_ROWS if on else 1
