"""Faster CPU inference for linear layers: oneDNN-prepacked weights.

On these machines ``F.linear`` with a bfloat16 weight and one or a few input rows (a decode or
latent step) reads the weights at about 12 GB/s, a third of the memory bandwidth; oneDNN's linear
on a weight reordered once into its blocked layout runs the same products about 1.5x faster with
bit-identical results (benchmarks/decode_overhead.py, docs/PERFORMANCE.md).

:func:`pack_linear_layers` changes the class of every ``nn.Linear`` in a model to
:class:`PackedLinear`: still an ``nn.Linear`` (PEFT's LoRA wraps it as before; parameters and
state dicts are unchanged), whose forward uses a packed copy of the weight when it can:
on CPU, without autograd, in the weight's own dtype. Training (gradients on) always takes the
ordinary path. The packed copy is made on first use and redone if the weight changes; it costs
one extra copy of the weights in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` that runs inference on a oneDNN-prepacked copy of its weight."""

    _packed: torch.Tensor | None
    _packed_key: tuple | None
    _packing_failed: bool

    def _usable(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (not torch.is_grad_enabled() and not self._packing_failed and x.device.type == "cpu"
                and w.device.type == "cpu" and x.dtype == w.dtype and w.dtype in (torch.bfloat16, torch.float32))

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
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._usable(x):
            packed = self._packed_weight()
            if packed is not None:
                bias = None if self.bias is None else self.bias.detach()
                return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def pack_linear_layers(model: nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`PackedLinear`; returns how many.
    A no-op (0) where oneDNN's packed linear is not available."""
    if not packing_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = PackedLinear
            module._packed, module._packed_key, module._packing_failed = None, None, False
            count += 1
    return count
