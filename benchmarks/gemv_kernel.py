"""Could a hand-written kernel read the weights faster than oneDNN at batch 1? (Tried, not kept.)

    pip install ninja && python benchmarks/gemv_kernel.py --out benchmarks/results/gemv_kernel.json

Times the matrix-vector products of one batch-1 decode step of Qwen2.5-Coder-0.5B (per layer the
fused q/k/v, o, fused gate/up and down projections, 24 layers, then the output head: 97 products
over 988 MB of distinct bfloat16 weights, so that nothing is served from the caches) three ways,
in interleaved rounds in one process:

* ``F.linear``: eager PyTorch;
* ``packed``: oneDNN on prepacked weights (:mod:`diffmas.models.packed`, this code's default);
* ``kernel``: an AVX512-BF16 kernel compiled here with ``torch.utils.cpp_extension.load_inline``,
  on weights laid out so that every block of 16 output rows is one contiguous stream (16 fp32
  accumulators, ``vdpbf16ps`` over 32 inputs at a time, the two threads on halves of the blocks).

Beside them, for scale: the copy bandwidth that ``bench.py`` divides by (read + write counted) and
a read-only stream (the sum of a 1 GB tensor), the ceiling of a product that only reads.
Needs a CPU with AVX512-BF16 and a C++ compiler; ninja for the build (``pip install ninja``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import copy_bandwidth  # noqa: E402

from diffmas.models.packed import make_packed  # noqa: E402

KERNEL = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
constexpr int64_t NB = 16;  // output rows per block: one fp32 accumulator register each

// (N, K) -> (N/16, K/32, 16, 32): a block's 16 rows, 32 inputs at a time, read front to back.
torch::Tensor pack(torch::Tensor w) {
  auto N = w.size(0), K = w.size(1);
  TORCH_CHECK(N % NB == 0 && K % 32 == 0, "rows must be a multiple of 16 and columns of 32");
  return w.view({N / NB, NB, K / 32, 32}).permute({0, 2, 1, 3}).contiguous();
}

// y (1, N) = x (1, K) W^T, bfloat16 in and out, fp32 accumulation.
torch::Tensor gemv(torch::Tensor x, torch::Tensor wb) {
  const int64_t K = x.size(1), KB = K / 32, N = wb.size(0) * NB;
  auto y = torch::empty({1, N}, x.options());
  const at::BFloat16* xp = x.data_ptr<at::BFloat16>();
  const at::BFloat16* wp = wb.data_ptr<at::BFloat16>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  at::parallel_for(0, N / NB, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb) {
      const at::BFloat16* blk = wp + nb * KB * NB * 32;
      __m512 acc[NB];
      for (int j = 0; j < NB; ++j) acc[j] = _mm512_setzero_ps();
      for (int64_t kb = 0; kb < KB; ++kb) {
        __m512bh xv = (__m512bh)_mm512_loadu_si512((const void*)(xp + kb * 32));
        const at::BFloat16* p = blk + kb * NB * 32;
        for (int j = 0; j < NB; ++j)
          acc[j] = _mm512_dpbf16_ps(acc[j], xv, (__m512bh)_mm512_loadu_si512((const void*)(p + j * 32)));
      }
      for (int j = 0; j < NB; ++j) yp[nb * NB + j] = at::BFloat16(_mm512_reduce_add_ps(acc[j]));
    }
  });
  return y;
}
"""

# Qwen2.5-Coder-0.5B: (out, in) of the products of one decode step, per layer, and the head.
LAYER = [(1152, 896), (896, 896), (9728, 896), (896, 4864)]
HEAD = (151936, 896)


def read_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    x = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    from torch.utils.cpp_extension import load_inline

    ext = load_inline("diffmas_gemv_bench", cpp_sources=KERNEL, functions=["gemv", "pack"],
                      extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-mavx512bf16"])
    torch.manual_seed(0)
    layers = []
    for out_features, in_features in LAYER * args.layers + [HEAD]:
        lin = torch.nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16)
        x = torch.randn(1, in_features, dtype=torch.bfloat16)
        layers.append((lin, make_packed(lin), ext.pack(lin.weight.data), x))
    nbytes = sum(lin.weight.numel() * 2 for lin, *_ in layers)
    ways = {
        "F.linear": lambda lin, packed, blocked, x: F.linear(x, lin.weight),
        "packed": lambda lin, packed, blocked, x: packed(x),
        "kernel": lambda lin, packed, blocked, x: ext.gemv(x, blocked),
    }
    with torch.inference_mode():
        worst = max((ext.gemv(x, b).float() - F.linear(x.float(), lin.weight.float())).abs().max().item()
                    for lin, _, b, x in layers[:4] + layers[-1:])
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds + 1):  # the first round warms up and is dropped
            for name, fn in ways.items():
                t0 = time.perf_counter()
                for layer in layers:
                    fn(*layer)
                times[name].append(time.perf_counter() - t0)
    copy, read = copy_bandwidth(), read_bandwidth()
    report = {"weight_bytes": nbytes, "threads": torch.get_num_threads(), "copy_bytes_per_s": copy,
              "read_bytes_per_s": read, "kernel_max_abs_error_vs_fp32": worst, "rounds": args.rounds,
              "ms_per_step": {k: 1000 * statistics.median(v[1:]) for k, v in times.items()},
              "all_rounds_ms": {k: [1000 * t for t in v[1:]] for k, v in times.items()}}
    print(f"{len(layers)} products, {nbytes / 1e6:.0f} MB of weights, {report['threads']} threads; copy bandwidth "
          f"{copy / 1e9:.1f} GB/s (bound {nbytes / copy * 1e3:.1f} ms), read-only {read / 1e9:.1f} GB/s")
    for name, ms in report["ms_per_step"].items():
        share = nbytes / copy * 1e3 / ms
        print(f"  {name:9s} {ms:6.1f} ms  {nbytes / ms / 1e6:5.1f} GB/s  {share:4.0%} of the copy bound")
    print(f"kernel's largest error against a float32 product: {worst:.3g}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
