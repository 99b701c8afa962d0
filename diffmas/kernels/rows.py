"""Row-count padding for matrix products whose kernel changes with the number of rows.

oneDNN's bfloat16 product of a single row, and MKL's float32 product of fewer than four, take
other paths than larger ones and round differently; from :data:`MIN_ROWS` rows up, each row's
result is the same whatever the number of rows. Used by the batch-invariant mode
(:mod:`diffmas.kernels.exact`), the packed linear layers and the latent map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

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
