"""Batch-invariant inference on CPU: a row's results do not depend on the batch it is in.

With left padding, masks over pads and real-token position ids, a row's outputs are the same at
any batch size in exact arithmetic, and in float32 the greedy outputs agree (docs/concepts.md). In
bfloat16 they drift: the kernels round a row differently depending on the shapes around it, and a
greedy continuation that meets a near-tie goes another way. Two kinds of kernel do this here:

- **Matrix products whose row count changes the kernel.** oneDNN's bfloat16 product of a single
  row takes another path than two rows or more (only some shapes round differently, e.g. the
  4864-wide MLP input of Qwen2.5-0.5B), and MKL's float32 one changes path below four rows; from
  there up, each row's result is the same whatever the number of rows (checked up to 8,000). So a
  product of fewer than :data:`MIN_ROWS` rows runs on its rows plus copies of the first one
  (:func:`at_least_rows`), and a batch-1 decode step is computed the way a batch-16 one is.
- **Attention over a padded trace.** Reductions over the key axis (probabilities times values)
  are blocked by position, so pads before a row's keys, and the trace length its longest
  neighbour sets, change the order in which its terms are added. Short queries (decoding, latent
  steps) go through :func:`_chunked_attention`, batched, whose sums run in an order set by
  the row's own keys; a prefill runs the attention kernel one row at a time on the row's real
  queries and keys, the very call a batch of one makes (:func:`invariant_attention`).

Off by default (``--batch-invariant``): its attention costs more than the batched matrix
products of :mod:`diffmas.kernels.attention` (docs/performance.md has the measured cost). Calls
with gradients (training) keep the batched path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from diffmas.errors import DiffMASError
from diffmas.kernels.attention import NAME as CPU_NAME
from diffmas.kernels.attention import SHORT_QUERY, autocast_off, diffmas_cpu_attention
from diffmas.kernels.packed import PackedLinear, make_packed
from diffmas.kernels.rows import MIN_ROWS

# Keys are summed over in chunks of this many positions (see _chunked_attention).
CHUNK = 64


class _RowPlan:
    """Which keys and queries of each row are real, worked out once per mask (every layer of a
    forward pass gets the same mask tensor), and how the rows are grouped.

    A row with at most SHORT_QUERY real queries (every row of a decode or latent step) goes through
    :func:`_chunked_attention` together with the other rows with as many; a longer one (a prefill)
    through the inner attention function alone. Both depend on the row only.
    """

    def __init__(self, mask: torch.Tensor, batch: int, q_len: int):
        # mask: bool (B or 1, 1, T, L), True = attend. A key is the row's if some query sees it:
        # pads are masked for every query. A new column is a real query iff its key is the row's.
        self.source = mask
        mask = mask.expand(batch, -1, -1, -1)
        visible = mask[:, 0].any(dim=1)  # (B, L)
        real_q = visible[:, visible.shape[1] - q_len :]  # (B, T)
        self.long_rows = []  # (row, query positions, key positions, (1, 1, t_i, l_i) mask)
        short: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for i in range(batch):
            keys = visible[i].nonzero().squeeze(1)
            queries = real_q[i].nonzero().squeeze(1)
            if len(queries) > SHORT_QUERY:
                self.long_rows.append((i, queries, keys, mask[i, :, queries][:, :, keys][None]))
            elif len(queries):
                short.setdefault(len(queries), []).append((i, queries, keys))
        self.groups = [_Group(rows, mask) for rows in short.values()]
        # Decode and latent steps: one group holding every row, each with all q_len queries real.
        only = next(iter(short), None)
        self.whole = len(short) == 1 and only == q_len and len(short[only]) == batch


class _Group:
    """Rows with as many real queries (at most SHORT_QUERY), as :func:`_chunked_attention` reads
    them: every row's keys gathered to the front, in order, padded to W, a multiple of CHUNK."""

    def __init__(self, rows: list[tuple[int, torch.Tensor, torch.Tensor]], mask: torch.Tensor):
        width = CHUNK * -(-max(len(k) for _, _, k in rows) // CHUNK)
        self.key_idx = torch.zeros(len(rows), width, dtype=torch.long)  # (r, W); pads point at key 0
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for j, (_, _, keys) in enumerate(rows):
            self.key_idx[j, : len(keys)] = keys
            valid[j, : len(keys)] = True
        self.rows = torch.tensor([i for i, _, _ in rows])  # (r,)
        self.query_idx = torch.stack([q for _, q, _ in rows])  # (r, t)
        sub = mask[self.rows[:, None], 0, self.query_idx]  # (r, t, L)
        keep = sub.gather(-1, self.key_idx[:, None, :].expand(-1, sub.shape[1], -1)) & valid[:, None, :]
        r, t, n = len(rows), sub.shape[1], width // CHUNK
        # (r, 1, n, 1, t, CHUNK): masked scores, laid out as the chunked scores per query head group.
        self.drop = ~keep.view(r, 1, t, n, CHUNK).transpose(2, 3)[:, :, :, None]
        self._flat: dict[tuple[int, int], torch.Tensor] = {}

    def flat_index(self, heads: int, length: int) -> torch.Tensor:
        """Row-major positions of (row, head, key) in the (r * Hk * L, D) view of a cache; the same
        for every layer, so made once. Whole D-vectors are then copied, much faster than an
        element-wise gather."""
        key = (heads, length)
        if key not in self._flat:
            r = len(self.rows)
            self._flat[key] = (
                (torch.arange(r)[:, None, None] * heads + torch.arange(heads)[None, :, None]) * length
                + self.key_idx[:, None, :]
            ).reshape(-1)
        return self._flat[key]


@autocast_off
def _chunked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, group: _Group, scaling: float
) -> torch.Tensor:
    """Attention whose every sum runs in an order fixed by the row's own keys, so that a row gets
    the same bits whatever other rows share the call.

    query (r, Hq, t, D) and key/value (r, Hk, L, D) of the group's rows. Returns (r, t, Hq, D) in
    query's dtype.

    Why chunks: a product over the key axis (probabilities times values) adds its terms in an
    order that depends on the axis' length, and W depends on the longest row of the batch. Here
    every product has CHUNK keys, and the chunks' results are then added one after another (a
    cumulative sum, sequential by definition), where the chunks of pads that a longer neighbour
    brings add exact zeros. The maximum is the same in any order.
    """
    r, hq, t, d = query.shape
    hk, n = key.shape[1], group.key_idx.shape[1] // CHUNK
    flat = group.flat_index(hk, key.shape[2])
    k = key.reshape(-1, d).index_select(0, flat).view(r, hk, n, CHUNK, d).float()
    v = value.reshape(-1, d).index_select(0, flat).view(r, hk, n, CHUNK, d).float()
    # (r, Hk, 1, group*t, D): the query heads sharing key head h are rows of one product.
    heads = hq // hk
    q = query.reshape(r, hk, 1, heads * t, d).float()
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling  # (r, Hk, n, heads*t, CHUNK)
    scores = scores.view(r, hk, n, heads, t, CHUNK).masked_fill(group.drop, torch.finfo(torch.float32).min)
    scores = scores.view(r, hk, n, heads * t, CHUNK)
    probs = torch.exp(scores - scores.amax(dim=(2, 4), keepdim=True))  # unnormalised
    numerator = torch.matmul(probs, v).cumsum(dim=2)[:, :, -1]  # (r, Hk, heads*t, D)
    denominator = probs.sum(dim=-1).cumsum(dim=2)[:, :, -1, :, None]  # (r, Hk, heads*t, 1)
    out = numerator / denominator
    return out.view(r, hq, t, d).transpose(1, 2).to(query.dtype)


_plans = threading.local()


def _plan(mask: torch.Tensor, batch: int, q_len: int) -> _RowPlan:
    # The plans of the last two masks of this thread (models with sliding-window layers alternate
    # two masks); each holds its mask alive, so an identity test cannot be fooled by a reused id.
    plans = _plans.__dict__.setdefault("recent", [])
    for plan in plans:
        if plan.source is mask:
            return plan
    plan = _RowPlan(mask, batch, q_len)
    plans[:] = [plan, *plans[:1]]
    return plan


def invariant_attention(inner: Callable) -> Callable:
    """An attention function (transformers' signature) that gives each row the bits it would get in
    a batch of one: short queries through :func:`_chunked_attention`, long ones through ``inner``
    one row at a time on the row's real queries and keys. Without gradients and with a boolean
    4-D mask only; anything else goes to ``inner`` unchanged."""

    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        b, hq, t, d = query.shape  # query (B, Hq, T, D); key, value (B, Hk, L, D)
        if (
            torch.is_grad_enabled()
            or not isinstance(attention_mask, torch.Tensor)
            or attention_mask.dtype != torch.bool
            or attention_mask.dim() != 4
            or attention_mask.shape[-1] != key.shape[2]
            or attention_mask.shape[-2] != t
            or hq % key.shape[1]
            or dropout
            or any(kwargs.get(k) is not None for k in _SPECIAL)
        ):
            return inner(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        scale = scaling if scaling is not None else d**-0.5
        plan = _plan(attention_mask, b, t)
        if plan.whole:  # every row's queries all real and short (decode and latent steps): one call
            return _chunked_attention(query, key, value, plan.groups[0], scale), None
        out = query.new_zeros(b, t, hq, d)  # (B, T, Hq, D); pads' rows stay 0
        for g in plan.groups:
            q = torch.gather(query[g.rows], 2, g.query_idx[:, None, :, None].expand(-1, hq, -1, d))
            out[g.rows[:, None], g.query_idx] = _chunked_attention(q, key[g.rows], value[g.rows], g, scale)
        for i, queries, keys, row_mask in plan.long_rows:
            row_out, _ = inner(
                module,
                query[i : i + 1].index_select(2, queries),
                key[i : i + 1].index_select(2, keys),
                value[i : i + 1].index_select(2, keys),
                row_mask,
                dropout=dropout,
                scaling=scaling,
                **kwargs,
            )
            out[i, queries] = row_out[0]
        return out, None

    return attention


# Arguments of attention variants the chunked path does not implement (they go to ``inner``).
_SPECIAL = ("softcap", "s_aux", "sinks", "position_bias", "cache")


def _full_mask(*args, **kwargs):
    # Always a boolean mask, never the causal shortcut (None): rows are cut out of it.
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


# Exact variants of the two implementations this project runs on CPU.
EXACT = {CPU_NAME: "diffmas_cpu_exact", "sdpa": "sdpa_exact"}
AttentionInterface.register(EXACT[CPU_NAME], invariant_attention(diffmas_cpu_attention))
AttentionInterface.register(EXACT["sdpa"], invariant_attention(sdpa_attention_forward))
for _name in EXACT.values():
    ALL_MASK_ATTENTION_FUNCTIONS.register(_name, _full_mask)


def is_batch_invariant(model: nn.Module) -> bool:
    return getattr(model.config, "_attn_implementation", None) in EXACT.values()


def make_batch_invariant(model: nn.Module, on: bool = True) -> None:
    """Make ``model``'s inference batch-invariant (see the module's docstring), or with ``on=False``
    undo it. Its attention must be SDPA or :mod:`diffmas.kernels.attention`'s; its linear layers
    become :class:`~diffmas.kernels.packed.PackedLinear` if they are not (products of few rows padded)."""
    current = getattr(model.config, "_attn_implementation", None)
    plain = {exact: name for name, exact in EXACT.items()}.get(current, current)
    if plain not in EXACT:
        raise DiffMASError(
            f"batch-invariant inference needs SDPA attention; this model uses {current!r} "
            "(load it with attn_implementation='sdpa')"
        )
    target = EXACT[plain] if on else plain
    if current != target:
        model.set_attn_implementation(target)
    for module in model.modules():
        if on and type(module) is nn.Linear:
            make_packed(module, pack=False)
        if isinstance(module, PackedLinear):
            module._min_rows = MIN_ROWS if on else 1
