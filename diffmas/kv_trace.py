"""The shared KV trace that latent agents write to and read from.

A batch of B problems shares one :class:`transformers.DynamicCache` of length L. Every agent adds
*segments* to it ([A1 prompt, A1 latents, A2 prompt, A2 latents, ..., final prompt, final text]);
nothing is ever overwritten. Prompts of different lengths are left-padded *per segment*, so pads
can sit in the middle of the trace. Two (B, L) masks describe it:

* ``real``: 1 where the position holds a real token or latent vector, 0 for padding. Position ids
  count real positions only, so a row's positions do not depend on how much padding its batch
  needed; this is what makes greedy answers independent of the batch size.
* ``visible``: 0 where a segment is hidden from later queries (independent agents in the
  hierarchical topology, communication dropout). Hidden positions still count for positions.

The attention mask handed to the model is ``real & visible``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass(frozen=True)
class Segment:
    """Columns [start, end) of the trace, written by one agent."""

    agent: str
    kind: str  # "prompt" | "latent" | "text"
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


class SharedKVCache:
    """Named operations on the shared trace: length, append, truncate, hide/show segments."""

    def __init__(self, batch_size: int, device: torch.device | str = "cpu", config=None, growing: bool = True):
        self.kv = DynamicCache(config=config) if config is not None else DynamicCache()
        if growing:  # full-attention layers append into spare capacity instead of re-copying the trace
            self.kv.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in self.kv.layers]
            if self.kv.layer_class_to_replicate is DynamicLayer:  # no config: layers are made on first use
                self.kv.layer_class_to_replicate = GrowingLayer
        self.device = torch.device(device)
        self.real = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        self.visible = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        self.segments: list[Segment] = []

    # -- queries ---------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.real.shape[0]

    def __len__(self) -> int:
        """Number of cached positions (columns, pads included)."""
        return self.real.shape[1]

    def real_lengths(self) -> torch.Tensor:
        """(B,) number of real positions per row."""
        return self.real.sum(dim=1)

    def segments_of(self, agent: str) -> list[Segment]:
        return [s for s in self.segments if s.agent == agent]

    # -- inputs for the next forward --------------------------------------------------------
    def position_ids(self, new_real: torch.Tensor) -> torch.Tensor:
        """(B, T) position ids for T new columns whose real-mask is ``new_real``.

        Real columns continue each row's count of real positions; pad columns get the position of
        the next real token (their value is irrelevant: they are masked as keys, and their own
        outputs are never read).
        """
        offset = self.real_lengths().unsqueeze(1)  # (B, 1)
        pos = offset + torch.cumsum(new_real, dim=1) - new_real
        return pos.long()

    def attention_mask(self, new_real: torch.Tensor) -> torch.Tensor:
        """(B, L + T) mask over the cached columns and the T new ones."""
        return torch.cat([self.real * self.visible, new_real.long()], dim=1)

    # -- mutation ---------------------------------------------------------------------------
    def append(self, agent: str, kind: str, new_real: torch.Tensor) -> Segment:
        """Record T columns that a forward pass just appended to ``self.kv``."""
        new_real = new_real.long().to(self.device)
        start = len(self)
        self.real = torch.cat([self.real, new_real], dim=1)
        self.visible = torch.cat([self.visible, torch.ones_like(new_real)], dim=1)
        if self.kv.get_seq_length() != len(self):
            raise RuntimeError(
                f"KV cache holds {self.kv.get_seq_length()} positions but the trace records {len(self)}; "
                "every forward pass on the shared cache must be followed by exactly one append()"
            )
        seg = Segment(agent, kind, start, len(self))
        # Consecutive columns of the same agent and kind (one decode step at a time) form one segment.
        if self.segments and (last := self.segments[-1]).agent == agent and last.kind == kind and last.end == start:
            seg = Segment(agent, kind, last.start, len(self))
            self.segments[-1] = seg
        else:
            self.segments.append(seg)
        return seg

    def set_visible(self, segment: Segment, visible: bool, rows: torch.Tensor | None = None) -> None:
        """Hide or show a segment from later queries, for all rows or the boolean ``rows`` (B,)."""
        cols = slice(segment.start, segment.end)
        if rows is None:
            self.visible[:, cols] = int(visible)
        else:
            self.visible[rows.to(self.device), cols] = int(visible)

    def borrow_rows(self, segment: Segment, source: torch.Tensor) -> None:
        """Replace row b's keys and values in ``segment``'s columns by row ``source[b]``'s, in
        every layer (an ablation: a problem reads another problem's latent steps). The keys keep
        the positions they were written at, so a row whose prompts were longer or shorter than
        its source's sees them a few positions off."""
        cols = slice(segment.start, segment.end)
        source = source.to(self.device)
        for layer in self.kv.layers:
            if not getattr(layer, "is_initialized", False) or layer.keys.shape[-2] != len(self):
                raise ValueError("borrow_rows needs layers that keep every position (no sliding window)")
            for name in ("keys", "values"):
                tensor = getattr(layer, name)
                tensor[:, :, cols] = tensor[source, :, cols].clone()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Append columns as constants: forward passes inside run under ``no_grad``, while the
        entries already cached keep their autograd graph.

        A bare ``no_grad`` is not enough once earlier entries carry a graph: transformers'
        ``DynamicLayer`` stores each layer as one tensor and appends by ``keys = cat([keys, new])``,
        so a ``no_grad`` append replaces the stored tensor with a detached copy and silently cuts
        the gradient of every earlier entry. On exit we re-join the old tensors (graph included)
        with the new, detached columns.
        """
        layers = self.kv.layers
        before = [(lay.keys, lay.values) if getattr(lay, "is_initialized", False) else None for lay in layers]
        start = len(self)
        with torch.no_grad():
            yield
        if not torch.is_grad_enabled():
            return
        added = len(self) - start
        for layer, old in zip(self.kv.layers, before):
            if old is not None and (old[0].requires_grad or old[1].requires_grad):
                layer.keys = _rejoin(old[0], layer.keys, added)
                layer.values = _rejoin(old[1], layer.values, added)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (1-D indices), e.g. to stop computing finished ones."""
        rows = rows.to(self.device)
        self.kv.batch_select_indices(rows)
        self.real = self.real[rows]
        self.visible = self.visible[rows]

    def drop_leading_pads(self, at_least: int = 64) -> int:
        """Drop the leading columns that are padding in every row, once there are ``at_least`` of
        them; returns how many were dropped.

        In a decoding pool (:class:`diffmas.decoding.DecodePool`) rows that join are left-padded to
        the pool's width and rows that leave keep their columns, so without this the width, and the
        cost of every step, grows with all the history of a long run. Position ids count real
        columns only and a pad takes no attention, so no row's result changes beyond the rounding
        of sums over another width. Segments keep naming the same columns. Only for traces whose
        layers keep every position.
        """
        if not self.batch_size or not self.mergeable:
            return 0
        used = self.real.any(dim=0)  # (L,): a column some row still reads
        n = int(used.int().argmax()) if bool(used.any()) else len(self)
        if n < at_least:
            return 0
        for layer in self.kv.layers:  # (B, H, L, D) -> (B, H, L - n, D); a buffer's next append copies
            layer.keys = layer.keys[..., n:, :]
            layer.values = layer.values[..., n:, :]
        self.real = self.real[:, n:]
        self.visible = self.visible[:, n:]
        self.segments = [Segment(s.agent, s.kind, max(s.start - n, 0), s.end - n) for s in self.segments if s.end > n]
        return n

    @property
    def mergeable(self) -> bool:
        """Whether :meth:`add_rows` can merge this trace: every layer keeps all its positions
        (sliding-window layers, as in Gemma 3, keep only their window)."""
        return all(_keeps_all(layer) for layer in self.kv.layers)

    def add_rows(self, other: SharedKVCache) -> None:
        """Append the rows of ``other`` (another batch's trace) after this cache's rows.

        The two traces generally differ in length: the shorter is left-padded with masked columns
        (``real == 0``), which changes no row's positions or attention. Segments describe columns
        of one batch, so they cannot describe the merged rows: the result keeps none (a merged
        cache is only ever decoded from, see :class:`diffmas.decoding.DecodePool`).
        """
        if not self.batch_size:
            self.kv, self.real, self.visible, self.segments = other.kv, other.real, other.visible, []
            return
        width = max(len(self), len(other))
        for mine, theirs in zip(self.kv.layers, other.kv.layers, strict=True):
            if not (_keeps_all(mine) and _keeps_all(theirs)):
                raise NotImplementedError(
                    f"cannot merge cache layers of type {type(mine).__name__} and {type(theirs).__name__}"
                )
            # keys / values: (B, H, L, D); pad L on the left to `width`, then stack the rows.
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self.real = torch.cat([_left_pad(self.real, width), _left_pad(other.real, width)])
        self.visible = torch.cat([_left_pad(self.visible, width), _left_pad(other.visible, width)])
        self.segments = []

    def truncate(self, length: int) -> None:
        """Drop every column from ``length`` on (e.g. to reuse a prefix)."""
        if not 0 <= length <= len(self):
            raise ValueError(f"cannot truncate a trace of length {len(self)} to {length}")
        if length < len(self):
            self.kv.crop(length - len(self))  # transformers 5: a negative count of positions to drop
        self.real = self.real[:, :length]
        self.visible = self.visible[:, :length]
        kept = []
        for s in self.segments:
            if s.start < length:
                kept.append(Segment(s.agent, s.kind, s.start, min(s.end, length)))
        self.segments = kept


def _rejoin(old: torch.Tensor, new: torch.Tensor, added: int) -> torch.Tensor:
    """``new`` (B, H, L, D) ends with ``added`` fresh columns, preceded by the last L - added
    columns of ``old`` (all of them, unless a sliding window dropped some) as detached copies.
    Returns the same values with those columns taken from ``old``, graph included."""
    kept = new.shape[-2] - added
    if kept <= 0:
        return new
    return torch.cat([old[..., old.shape[-2] - kept :, :], new[..., kept:, :]], dim=-2)


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros in front of the column axis (-2 for (B, H, L, D) keys, -1 for (B, L) masks) up to ``width``."""
    axis = -2 if t.dim() == 4 else -1
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)


def _keeps_all(layer) -> bool:
    """A layer that caches every position (not a sliding window)."""
    return isinstance(layer, DynamicLayer) and not layer.is_sliding


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into spare capacity when no gradient is recorded.

    ``DynamicLayer`` appends by ``keys = cat([keys, new])``, which copies the whole trace at every
    step: at batch 16 over 700 positions that is 138 MB per decode step for the 0.5B model. Here
    ``keys`` / ``values`` are prefix views ``buf[:, :, :L]`` of (B, H, capacity, D) buffers and an
    append writes only the new columns. A crop keeps the view a prefix of its buffer (the next
    append overwrites the dropped columns). Anything that replaces ``keys`` with a tensor of its
    own (``SharedKVCache.add_rows``) is noticed by :meth:`_in_buffer`, and the next append copies
    it into a fresh buffer.

    With gradients the plain ``cat`` is kept: writing into a buffer in place would change tensors
    that autograd saved for the backward pass.
    """

    GROWTH = 1.5  # capacity: GROWTH x the length needed, rounded up to a multiple of CHUNK
    CHUNK = 64

    def __init__(self) -> None:
        super().__init__()
        # name ("keys" / "values") -> (B, H, capacity, D) buffer, and the prefix view last handed out.
        self.buffers: dict[str, torch.Tensor | None] = {"keys": None, "values": None}
        self.views: dict[str, torch.Tensor | None] = {"keys": None, "values": None}

    def reset(self) -> None:
        self.buffers = {"keys": None, "values": None}
        self.views = {"keys": None, "values": None}
        super().reset()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if torch.is_grad_enabled() or self.keys.requires_grad or self.values.requires_grad:
            return super().update(key_states, value_states, *args, **kwargs)
        self.keys = self._append("keys", key_states)
        self.values = self._append("values", value_states)
        return self.keys, self.values

    def _in_buffer(self, name: str) -> bool:
        """Whether ``self.<name>`` still is the view of its buffer last handed out (nothing replaced it:
        an identity test, as this runs twice per layer and step)."""
        return self.buffers[name] is not None and getattr(self, name) is self.views[name]

    def _append(self, name: str, new: torch.Tensor) -> torch.Tensor:
        """(B, H, L, D) cached ``self.<name>`` + (B, H, T, D) ``new`` -> a (B, H, L + T, D) view."""
        view = getattr(self, name)
        length = view.shape[-2] if view.numel() else 0
        needed = length + new.shape[-2]
        if not (self._in_buffer(name) and needed <= self.buffers[name].shape[-2]):
            capacity = -(-int(needed * self.GROWTH) // self.CHUNK) * self.CHUNK
            fresh = new.new_empty(*new.shape[:2], capacity, new.shape[-1])
            if length:
                fresh[:, :, :length].copy_(view)
            self.buffers[name] = fresh
        buf = self.buffers[name]
        buf[:, :, length:needed].copy_(new)
        self.views[name] = buf[:, :, :needed]
        return self.views[name]

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last columns; the view stays a prefix of its buffer (the next append overwrites them)."""
        kept = {name: self._in_buffer(name) for name in ("keys", "values")}
        super().crop(tokens_to_remove)
        for name, in_buffer in kept.items():
            if in_buffer:
                self.views[name] = getattr(self, name)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices``; their spare capacity comes along (no copy at the next append)."""
        if self.get_seq_length() == 0:
            return
        for name in ("keys", "values"):
            view = getattr(self, name)
            if self._in_buffer(name):  # buffered views are written without gradients, never require them
                self.buffers[name] = self.buffers[name][indices]
                self.views[name] = self.buffers[name][:, :, : view.shape[-2]]
                setattr(self, name, self.views[name])
            else:
                setattr(self, name, view[indices, ...])
