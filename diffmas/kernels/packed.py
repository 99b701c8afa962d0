"""Faster CPU linear layers (inference, and training under frozen weights): oneDNN-prepacked weights.

Batch-1 decoding and latent steps are bound by reading the weights. ``F.linear`` with a bfloat16
weight and one or a few input rows reads them well below the memory bandwidth; oneDNN's linear on
a weight reordered once into its blocked layout runs the same products faster, with bit-identical
results (docs/performance.md has the measured effect).

:func:`pack_linear_layers` changes the class of every ``nn.Linear`` in a model to
:class:`PackedLinear`: still an ``nn.Linear`` (PEFT's LoRA wraps it as before; parameters and
state dicts are unchanged), whose forward uses a packed copy of the weight when it can:
on CPU, in the weight's own dtype, and with autograd on only while the weight and bias are frozen
(the base model under LoRA): the input's gradient is then one more packed product, with the
transposed weight (:class:`_FrozenProduct`). A trainable weight takes the ordinary path. The packed
copy is made on first use and redone if the weight changes; it costs one extra copy of the
weights in memory, and training a second one (the transposed copy, made on the first backward).

:func:`fuse_sibling_layers` goes one step further for the projections that always read the same
input (attention's query, key and value; the gated MLP's gate and up): the first of them called
with an input computes all their outputs with one product over their concatenated, packed weights
and the others take their slice. Fewer, larger products read the weights faster at the batch sizes
of decoding, with bit-identical results (oneDNN accumulates each output element over the input
dimension in the same order whatever the number of output rows; tests/test_packed.py checks it).
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

from diffmas.kernels.rows import at_least_rows


@functools.cache
def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN can pack ``dtype`` weights here: its bfloat16 path needs AVX512-BW/VL or
    AVX-NE-CONVERT, so on an AVX2-only CPU bfloat16 layers keep ``F.linear``."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 1)
    except RuntimeError:
        return False
    return True


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` that runs inference on a oneDNN-prepacked copy of its weight."""

    _packed: torch.Tensor | None
    _packed_key: tuple | None
    _packed_t: torch.Tensor | None
    _packing_failed: bool
    _siblings: FusedSiblings | None
    _min_rows: int  # > 1: products of fewer rows are padded (batch-invariant inference, diffmas.kernels.exact)
    _cast_weight: bool  # the weight is cast to the input's dtype, not the input to the weight's (LoRA)

    def _usable(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (
            (not torch.is_grad_enabled() or _frozen(self))
            and not self._packing_failed
            and x.device.type == "cpu"
            and w.device.type == "cpu"
            and x.dtype == w.dtype
            and w.dtype in (torch.bfloat16, torch.float32)
        )

    def _packed_weight(self) -> torch.Tensor | None:
        w = self.weight
        # The weight's version counter and storage change when it is edited or replaced in place
        # (e.g. LoRA weights merged into it): the packed copy must follow.
        key = (w.data_ptr(), w._version, w.dtype)
        if self._packed is None or self._packed_key != key:
            try:
                self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1)
            except RuntimeError:  # a build or CPU without this oneDNN path: use F.linear from now on
                self._packing_failed = True
                self._packed = None
                return None
            self._packed_key = key
            self._packed_t = None
        return self._packed

    def _transposed(self) -> torch.Tensor:
        """The packed (in, out) transpose of the weight, for the input's gradient; made once."""
        if self._packed_t is None:
            self._packed_t = _pack_transposed(self.weight.detach())
        return self._packed_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._usable(x):
            if self._siblings is not None:
                out = self._siblings.output(self, x)
                if out is not None:
                    return out
            packed = self._packed_weight()
            if packed is not None:
                bias = None if self.bias is None else self.bias.detach()
                return _product(x, packed, bias, self._transposed, self._min_rows)
        weight, bias = self.weight, self.bias
        if self._cast_weight and weight.dtype != x.dtype:  # differentiable: the gradient reaches the weight
            weight = weight.to(x.dtype)
            bias = None if bias is None else bias.to(x.dtype)
        if self._min_rows > 1:
            return at_least_rows(lambda rows: F.linear(rows, weight, bias), x, self._min_rows)
        return F.linear(x, weight, bias)


def _frozen(layer: nn.Linear) -> bool:
    return not layer.weight.requires_grad and (layer.bias is None or not layer.bias.requires_grad)


def _pack_transposed(weight: torch.Tensor) -> torch.Tensor:
    # Packed as the weight of a linear layer from out_features to in_features: x @ W = linear(x, W^T).
    return torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous(), 1)


class _FrozenProduct(torch.autograd.Function):
    """y = x W^T + b on packed weights, for a frozen W and b: only x gets a gradient,
    dL/dx = dL/dy W, itself a packed product with the transposed weight."""

    @staticmethod
    def forward(ctx, x, packed, bias, transposed):
        ctx.transposed = transposed  # a callable, so the transposed copy is made only if needed
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        grad_x = torch.ops.mkldnn._linear_pointwise(grad.contiguous(), ctx.transposed(), None, "none", [], "")
        return grad_x, None, None, None


def _product(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, transposed, min_rows: int = 1
) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _FrozenProduct.apply(x, packed, bias, transposed)
    if min_rows > 1:
        return at_least_rows(
            lambda rows: torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], ""), x, min_rows
        )
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def pack_linear_layers(model: nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`PackedLinear`; returns how many.
    A no-op (0) where oneDNN's packed linear is not available."""
    if not packing_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            make_packed(module)
            count += 1
    return count


def make_packed(module: nn.Linear, pack: bool = True) -> PackedLinear:
    """Turn ``module`` into a :class:`PackedLinear` in place; ``pack=False`` keeps ``F.linear``
    (for the row padding of batch-invariant inference alone)."""
    module.__class__ = PackedLinear
    # A layer told not to pack behaves as one whose packing failed: F.linear from the start.
    packable = module.weight.dtype in (torch.bfloat16, torch.float32) and packing_available(module.weight.dtype)
    module._packed, module._packed_key, module._packing_failed = None, None, not (pack and packable)
    module._packed_t = None
    module._siblings = None
    module._min_rows = 1
    module._cast_weight = False
    return module


class FusedSiblings:
    """Packed linears of one module that always read the same input: one product for all of them.

    A member called with input x computes every member's output from x at once and returns its own
    slice (a view of the (..., sum of out_features) product); the other members, called next with
    the very same tensor x, are handed theirs without computing. A member called with any other
    input computes all outputs afresh, so results never depend on call order or on which members
    are called: at worst a product is done for nothing. The slices waiting to be handed out are
    kept per thread, so threads sharing a model never receive each other's.
    """

    def __init__(self, members: list[PackedLinear]):
        self.members = members
        self.sizes = [m.out_features for m in members]
        self._packed: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
        self._key: tuple | None = None
        self._packed_t: torch.Tensor | None = None
        self._failed = False
        self._pending = threading.local()  # .input: the tensor x; .waiting: id(member) -> slice of x's product

    def _packed_weight(self) -> torch.Tensor | None:
        params = [p for m in self.members for p in (m.weight, m.bias) if p is not None]
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)  # follows edits, as PackedLinear
        if self._key != key:
            try:
                self._packed = torch.ops.mkldnn._reorder_linear_weight(
                    torch.cat([m.weight.detach() for m in self.members]), 1
                )
            except RuntimeError:  # no oneDNN path here: the members compute alone from now on
                self._failed, self._packed = True, None
                return None
            with_bias = self.members[0].bias is not None
            self._bias = torch.cat([m.bias.detach() for m in self.members]) if with_bias else None
            self._key = key
            self._packed_t = None
        return self._packed

    def _transposed(self) -> torch.Tensor:
        if self._packed_t is None:
            self._packed_t = _pack_transposed(torch.cat([m.weight.detach() for m in self.members]))
        return self._packed_t

    def output(self, member: PackedLinear, x: torch.Tensor) -> torch.Tensor | None:
        """``member``'s output for ``x``, or None where the fused product is unavailable."""
        pending = self._pending
        waiting = getattr(pending, "waiting", None)
        if waiting and pending.input is x and id(member) in waiting:
            out = waiting.pop(id(member))
            if not waiting:
                pending.input = None  # every slice handed out: keep nothing alive
            return out
        if torch.is_grad_enabled() and not all(map(_frozen, self.members)):
            return None
        packed = None if self._failed else self._packed_weight()
        if packed is None:
            return None
        y = _product(x, packed, self._bias, self._transposed, member._min_rows)  # (..., sum of out_features)
        parts = dict(zip(map(id, self.members), y.split(self.sizes, dim=-1)))
        out = parts.pop(id(member))
        pending.input, pending.waiting = x, parts
        return out


# Projections that read the same input in every decoder layer of the architectures we know
# (Qwen2, Llama, Mistral, Gemma, SmolLM): attention's q/k/v and the gated MLP's gate/up.
SIBLING_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def fuse_sibling_layers(model: nn.Module, on: bool = True) -> int:
    """Group the packed sibling projections of every module of ``model`` (see
    :class:`FusedSiblings`); ``on=False`` ungroups them. Returns how many groups were made (or
    undone). Members must be :class:`PackedLinear` (call :func:`pack_linear_layers` first) with
    the same input size, dtype and device, and all or none with a bias; others are left ungrouped."""
    count = 0
    for module in model.modules():
        for names in SIBLING_NAMES:
            # A PEFT-wrapped projection keeps the original linear as its base_layer: group that one.
            members = [getattr(getattr(module, n, None), "base_layer", getattr(module, n, None)) for n in names]
            if not all(isinstance(m, PackedLinear) for m in members):
                continue
            first = members[0]
            same = all(
                m.in_features == first.in_features
                and m.weight.dtype == first.weight.dtype
                and m.weight.device == first.weight.device
                and (m.bias is None) == (first.bias is None)
                for m in members
            )
            group = FusedSiblings(members) if on and same else None
            for m in members:
                m._siblings = group
            count += same
    return count
