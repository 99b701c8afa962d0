"""Where the time of one batch-1 decode step goes, measured side by side in one process.

    python benchmarks/diagnostics/decode_overhead.py               # Qwen2.5-Coder-0.5B-Instruct, bf16
    python benchmarks/diagnostics/decode_overhead.py --model tiny  # smoke run

Rows, each in milliseconds per token at the same cache length:

* ``weights only``: one ``F.linear`` per weight matrix the step reads (every decoder projection and
  the output head) on a (1, d) input: the floor for eager kernels on this machine;
* ``hf forward``: the Hugging Face model called one token at a time on a ``DynamicCache`` (no mask,
  logits of the last token only): what ``generate`` does, minus its bookkeeping;
* ``hf generate``: ``model.generate`` greedy, forced to run the full number of tokens;
* ``engine decode``: :meth:`diffmas.engine.LM.decode`, the loop every method uses;

then the first and last again with the linear layers on oneDNN-prepacked weights
(:mod:`diffmas.kernels.packed`, what ``load_model`` does by default on CPU), then the engine once
more with attention of one-token queries as plain matrix products
(:mod:`diffmas.kernels.attention`, also a ``load_model`` default on CPU), then with the sibling
projections (q/k/v, gate/up) as one product each (:func:`diffmas.kernels.packed.fuse_sibling_layers`,
also a default),

then the default decode step and latent step (which reads no output head) each split in two:
their packed products replayed alone, and everything else (the step with each product's output
taken from a table: norms, rotary embeddings, attention, cache appends, masks, Python). The
products alone bound what any loop around them can reach;

and the bandwidth bound (weight bytes per token / copy bandwidth) for scale. Run it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for bench.py
from bench import copy_bandwidth, weight_bytes_per_token  # noqa: E402

from diffmas.decoding import decode  # noqa: E402
from diffmas.engine import LM  # noqa: E402
from diffmas.kernels import packed as packed_module  # noqa: E402
from diffmas.kernels.attention import use_cpu_attention  # noqa: E402
from diffmas.kernels.packed import fuse_sibling_layers, pack_linear_layers  # noqa: E402
from diffmas.latent import Realigner, run_latent_steps  # noqa: E402
from diffmas.models import build_tiny_model, load_model  # noqa: E402


def best_of(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls (the machine's noise only adds time)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def weights_only_ms(lm: LM, steps: int) -> float:
    layers = [m for m in lm.decoder.modules() if isinstance(m, torch.nn.Linear)] + [lm.head]
    inputs = [torch.ones(1, m.in_features, dtype=m.weight.dtype) for m in layers]

    def run():
        for _ in range(steps):
            for m, x in zip(layers, inputs):
                m(x)

    return 1000 * best_of(run, 3) / steps


def prompt(lm: LM, length: int) -> torch.Tensor:
    vocab = lm.head.weight.shape[0]
    return torch.tensor([[(100 + i) % vocab for i in range(length)]])


def hf_forward_ms(lm: LM, length: int, steps: int) -> float:
    ids = prompt(lm, length)

    def run():
        cache = DynamicCache(config=lm.model.config)
        out = lm.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = lm.model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        run.elapsed = time.perf_counter() - t0

    times = []
    for _ in range(3):
        run()
        times.append(run.elapsed)
    return 1000 * min(times) / steps


def hf_generate_ms(lm: LM, length: int, steps: int) -> float:
    ids = prompt(lm, length)
    prefill = best_of(lambda: lm.model.generate(ids, max_new_tokens=1, do_sample=False), 2)
    full = best_of(
        lambda: lm.model.generate(ids, max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False), 3
    )
    return 1000 * (full - prefill) / steps


def engine_decode_ms(lm: LM, length: int, steps: int) -> float:
    ids = prompt(lm, length)[0].tolist()
    stop, lm.stop_ids = lm.stop_ids, torch.tensor([], dtype=torch.long)  # run every step
    times = []
    try:
        for _ in range(3):
            cache = lm.new_cache(1)
            hidden = lm.prefill(cache, "A", [ids])
            t0 = time.perf_counter()
            decode(lm, cache, "A", hidden, steps + 1)  # the last token needs no forward
            times.append(time.perf_counter() - t0)
    finally:
        lm.stop_ids = stop
    return 1000 * min(times) / steps


@contextlib.contextmanager
def products_replaced(replacement):
    """Every packed product (``diffmas.kernels.packed._product``) goes through ``replacement(real,
    x, packed, bias, transposed, min_rows)`` instead, ``real`` being the product itself."""
    real = packed_module._product
    packed_module._product = lambda *a: replacement(real, *a)
    try:
        yield
    finally:
        packed_module._product = real


def _step_runner(lm: LM, length: int, kind: str):
    """A function running ``n`` steps of ``kind`` after a fresh prefill; it sets ``.elapsed``
    to the steps' wall time (the prefill not counted)."""
    ids = prompt(lm, length)[0].tolist()
    realigner = Realigner.for_lm(lm)

    def run(n: int) -> None:
        cache = lm.new_cache(1)
        hidden = lm.prefill(cache, "A", [ids])
        stop, lm.stop_ids = lm.stop_ids, torch.tensor([], dtype=torch.long)  # decode every step
        try:
            t0 = time.perf_counter()
            if kind == "decode":
                decode(lm, cache, "A", hidden, n + 1)  # the last token needs no forward
            else:
                run_latent_steps(lm, cache, "A", hidden, n, realigner)
            run.elapsed = time.perf_counter() - t0
        finally:
            lm.stop_ids = stop

    return run


def one_step_products(lm: LM, length: int, kind: str) -> list[tuple]:
    """The packed products of one step of ``kind``, in order: (input, packed weight, bias)."""
    calls = []

    def record(real, x, packed, bias, transposed, min_rows=1):
        calls.append((x.clone(), packed, bias))
        return real(x, packed, bias, transposed, min_rows)

    with products_replaced(record):
        _step_runner(lm, length, kind)(1)
    # The prefill's products, then one step's (decode: the head's for the prefill's last token,
    # the step's, the head's for its own token): the second half is one step.
    return calls[len(calls) // 2 :]


def step_split_ms(lm: LM, length: int, steps: int, kind: str) -> tuple[float, float, float]:
    """One default step of ``kind`` ("decode" or "latent") at batch 1 split in three, ms per step:
    the whole step, its packed products replayed alone (the same inputs and weights, in the same
    order), and the step with every product answered from a table of earlier outputs of the right
    shape (so everything but the products: norms, rotary embeddings, attention, cache appends,
    masks, Python)."""
    run = _step_runner(lm, length, kind)

    def timed(n: int) -> float:
        times = []
        for _ in range(3):
            run(n)
            times.append(run.elapsed)
        return 1000 * min(times) / n

    whole = timed(steps)
    step_calls = one_step_products(lm, length, kind)

    def replay() -> None:
        for _ in range(steps):
            for x, w, b in step_calls:
                torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    products = 1000 * best_of(replay, 3) / steps
    table: dict = {}

    def answered(real, x, packed, bias, transposed, min_rows=1):
        key = (tuple(x.shape), id(packed))
        if key not in table:
            table[key] = real(x, packed, bias, transposed, min_rows)
        return table[key]

    with products_replaced(answered):
        run(2)  # fills the table
        rest = timed(steps)
    return whole, products, rest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="a model name, or 'tiny'")
    p.add_argument("--length", type=int, default=150, help="cache length before decoding")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument(
        "--split-rounds",
        type=int,
        default=3,
        help="rounds of the decode/latent split (products alone, everything else)",
    )
    p.add_argument("--out", default="benchmarks/results/decode-overhead-qwen0.5b.json")
    args = p.parse_args(argv)
    lm = (
        LM(*build_tiny_model("qwen2", seed=0, dtype=torch.bfloat16), name="tiny")
        if args.model == "tiny"
        else LM(*load_model(args.model, dtype="bfloat16", packed=False, cpu_attention=False), name=args.model)
    )
    bound_ms = 1000 * weight_bytes_per_token(lm) / copy_bandwidth()
    with torch.inference_mode():
        engine_decode_ms(lm, 16, 4)  # warm-up
        rows = {
            "bandwidth bound": bound_ms,
            "weights only": weights_only_ms(lm, args.steps),
            "hf forward": hf_forward_ms(lm, args.length, args.steps),
            "hf generate": hf_generate_ms(lm, args.length, args.steps),
            "engine decode": engine_decode_ms(lm, args.length, args.steps),
        }
        pack_linear_layers(lm.model)
        engine_decode_ms(lm, 16, 4)  # warm-up: packs every weight
        rows["weights only, packed"] = weights_only_ms(lm, args.steps)
        rows["engine decode, packed"] = engine_decode_ms(lm, args.length, args.steps)
        use_cpu_attention(lm.model)
        engine_decode_ms(lm, 16, 4)
        rows["engine decode, packed + matmul attention"] = engine_decode_ms(lm, args.length, args.steps)
        fuse_sibling_layers(lm.model)
        engine_decode_ms(lm, 16, 4)  # warm-up: packs the fused weights
        rows["engine decode, packed + matmul attention + fused q/k/v, gate/up"] = engine_decode_ms(
            lm, args.length, args.steps
        )
        # Rounds alternate the two kinds of step; the table shows each figure's median over them.
        rounds = [
            {kind: step_split_ms(lm, args.length, args.steps, kind) for kind in ("decode", "latent")}
            for _ in range(args.split_rounds)
        ]
        split = {
            kind: tuple(statistics.median(r[kind][i] for r in rounds) for i in range(3))
            for kind in ("decode", "latent")
        }
        for kind, (whole, products, rest) in split.items():
            rows[f"default {kind} step (the last row's setup)"] = whole
            rows[f"{kind} step: its products alone"] = products
            rows[f"{kind} step: everything but its products"] = rest
    print(f"{lm.name}, {torch.get_num_threads()} threads, cache length {args.length}, batch 1\n")
    print("| what | ms/token | tokens/s | share of bound |\n|---|---|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.1f} | {1000 / ms:.1f} | {100 * bound_ms / ms:.0f}% |")
    print(f"\nthe split, round by round (ms: whole step / products alone / everything else; {len(rounds)} rounds):")
    for r in rounds:
        (dw, dp, dr), (lw, lp, lr) = r["decode"], r["latent"]
        print(
            f"  decode {dw:.1f} / {dp:.1f} / {dr:.1f}   latent {lw:.1f} / {lp:.1f} / {lr:.1f}   "
            f"latent/decode: whole {lw / dw:.2f}, products {lp / dp:.2f}, the rest {lr / dr:.2f}; "
            f"decode products + rest = {(dp + dr) / dw:.2f}x the whole step"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "args": vars(args),
                "threads": torch.get_num_threads(),
                "ms_per_token": rows,
                "step_split_rounds_ms": [
                    {k: dict(zip(("whole", "products", "rest"), v)) for k, v in r.items()} for r in rounds
                ],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
