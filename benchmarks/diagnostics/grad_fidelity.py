"""How faithful bfloat16 training gradients are: one micro-batch's loss and adapter gradients
computed in bfloat16 and in float32 (the reference), compared per agent.

    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/grad_fidelity.py        # diffmas, 0.5B
    DIFFMAS_DATA_DIR=../shared/data python benchmarks/diagnostics/grad_fidelity.py --method single_sft
    python benchmarks/diagnostics/grad_fidelity.py --model DIR --task synthetic-arith     # any model

Both passes start from the same freshly initialised adapters (same seed) and read the same
problems; comm dropout and LoRA dropout are off, so the two differ only in the model's dtype.
For each group of trainable parameters (each agent's LoRA weights, split into the first and
second half of the layers, and the communication adapter) it prints the gradient norm in both
dtypes and their cosine similarity, and writes it all as JSON. A cosine near 1 and equal norms
mean bfloat16 trains that group as float32 would.

``--variant KEY=VALUE ...`` adds a third pass with those training settings (``--variant-dtype``,
default bfloat16), compared with float32 alike and timed beside the plain bfloat16 pass;
``--variant-rounded-weights`` gives that pass the base weights rounded to bfloat16. Two checks of
the reference itself: float32 on other kernels (rounding at float32's level), and float32
computed with bfloat16's weights (how much of the gap the weights alone make):

    python benchmarks/diagnostics/grad_fidelity.py --variant packed=false --variant-dtype float32
    python benchmarks/diagnostics/grad_fidelity.py --variant-rounded-weights --variant-dtype float32
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml


def gradients(
    args: argparse.Namespace, dtype: str, options: dict | None = None, round_weights: bool = False
) -> tuple[float, dict[str, torch.Tensor], float]:
    """Loss, {parameter name: float32 gradient} and seconds (forward and backward, the faster of
    two rounds) of one micro-batch in ``dtype``, with TrainConfig ``options``."""
    from diffmas.train.config import TrainConfig
    from diffmas.train.trainer import Trainer

    settings = dict(
        model=args.model,
        method=args.method,
        task=args.task,
        split="train",
        exclude_last=500,
        batch_size=args.batch_size,
        max_steps=1,
        latent_steps=args.latent_steps,
        lora_dropout=0.0,
        comm_dropout=0.0,
        dtype=dtype,
        device=args.device,
        out=args.scratch,
        seed=args.seed,
        grad_through=args.grad_through,
        last_k=args.last_k,
        realign=not args.no_realign,
        repeat_question=args.repeat_question,
    )
    cfg = TrainConfig(**(settings | (options or {})))
    lm = None
    if round_weights:  # the bfloat16 model's weights, computed with in `dtype`
        lm = cfg.load_lm()
        with torch.no_grad():
            for p in lm.model.parameters():
                p.copy_(p.to(torch.bfloat16).to(p.dtype))
    trainer = Trainer(cfg, lm=lm, progress=False)
    trainer.lm.model.train()
    names = {id(p): n for n, p in trainer.lm.model.named_parameters()}
    if trainer.comm is not None:
        names.update({id(p): f"comm_adapter.{n}" for n, p in trainer.comm.named_parameters()})
    times = []
    for _ in range(2):
        trainer.optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        out = trainer.loss(trainer.items[: args.batch_size])
        out.loss.backward()
        times.append(time.perf_counter() - started)
    grads = {
        names.get(id(p), f"param{i}"): p.grad.detach().float().clone()
        for i, p in enumerate(trainer.params)
        if p.grad is not None
    }
    return out.loss.item(), grads, min(times)


def group_of(name: str, layers: int) -> str:
    """'Planner, first half of the layers' for a LoRA weight, 'comm adapter' for the communication map."""
    if name.startswith("comm_adapter"):
        return "comm adapter"
    match = re.search(r"layers\.(\d+)\..*lora_[AB]\.([^.]+)\.weight$", name)
    if not match:
        return name
    layer, agent = int(match.group(1)), match.group(2)
    half = "first" if layer < layers // 2 else "second"
    return f"{agent}, {half} half of the layers"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--method", default="diffmas", choices=["diffmas", "single_sft"])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument("--grad-through", default="full", choices=["none", "full", "last_k"])
    p.add_argument("--last-k", type=int, default=1, help="with --grad-through last_k")
    p.add_argument("--no-realign", action="store_true", help="latent steps without the realignment matrix")
    p.add_argument(
        "--repeat-question", action="store_true", help="state the question in every agent's prompt (before 2026-11-23)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scratch", default="/tmp/diffmas-grad-fidelity")
    p.add_argument(
        "--out", default=None, help="JSON file (default: benchmarks/results/grad-fidelity-METHOD-qwen0.5b.json)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--variant",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="also a pass with these training settings (e.g. grad_through=none), compared alike",
    )
    p.add_argument(
        "--variant-dtype",
        default="bfloat16",
        help="dtype of the --variant pass (float32 with, e.g., packed=false: how far rounding alone moves the gradient)",
    )
    p.add_argument(
        "--variant-rounded-weights",
        action="store_true",
        help="the --variant pass uses the base weights rounded to bfloat16 (in --variant-dtype)",
    )
    args = p.parse_args(argv)
    variant = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.variant)}
    has_variant = bool(variant) or args.variant_rounded_weights
    loss32, ref, secs32 = gradients(args, "float32")
    loss16, low, secs16 = gradients(args, "bfloat16")
    loss_v, var, secs_v = (
        gradients(args, args.variant_dtype, variant, args.variant_rounded_weights)
        if has_variant
        else (None, None, None)
    )
    layers = 1 + max((int(m.group(1)) for n in ref if (m := re.search(r"layers\.(\d+)\.", n))), default=0)
    groups: dict[str, list[str]] = defaultdict(list)
    for name in ref:
        groups[group_of(name, layers)].append(name)
    rows = []
    for group, members in list(groups.items()) + [("all", list(ref))]:
        a = torch.cat([ref[n].flatten() for n in members])
        b = torch.cat([low[n].flatten() for n in members])
        if a.norm() == 0 and b.norm() == 0:
            continue  # e.g. LoRA A matrices before the first update (B = 0): no gradient in either
        row = {
            "group": group,
            "parameters": len(members),
            "norm_float32": a.norm().item(),
            "norm_bfloat16": b.norm().item(),
            "cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
            "relative_error": ((b - a).norm() / a.norm().clamp_min(1e-30)).item(),
        }
        if var is not None:
            c = torch.cat([var.get(n, torch.zeros_like(ref[n])).flatten() for n in members])  # no gradient: zeros
            row |= {
                "norm_variant": c.norm().item(),
                "cosine_variant": torch.nn.functional.cosine_similarity(a, c, dim=0).item(),
            }
        rows.append(row)
    through = args.grad_through + (f" (k = {args.last_k})" if args.grad_through == "last_k" else "")
    through += ", no realignment" if args.no_realign else ""
    print(
        f"\n{args.model}, {args.method}, {args.task}, batch {args.batch_size}, {args.latent_steps} latent steps, "
        f"gradients through: {through}"
    )
    print(f"loss: float32 {loss32:.5f}, bfloat16 {loss16:.5f}" + (f", variant {loss_v:.5f}" if has_variant else ""))
    print(f"seconds (forward + backward): float32 {secs32:.2f}, bfloat16 {secs16:.2f}", end="")
    print(
        f", variant {secs_v:.2f} ({secs_v / secs16:.2f}x bfloat16): {args.variant_dtype} {args.variant}\n"
        if has_variant
        else "\n"
    )
    extra = " norm (variant) | cosine (variant) |" if has_variant else ""
    print("| parameters | norm (float32) | norm (bfloat16) | cosine | relative error |" + extra)
    print("|---|---|---|---|---|" + ("---|---|" if has_variant else ""))
    for r in rows:
        tail = f" {r['norm_variant']:.4f} | {r['cosine_variant']:.4f} |" if has_variant else ""
        print(
            f"| {r['group']} | {r['norm_float32']:.4f} | {r['norm_bfloat16']:.4f} | {r['cosine']:.4f} | "
            f"{r['relative_error']:.3f} |" + tail
        )
    out = Path(args.out or f"benchmarks/results/grad-fidelity-{args.method}-qwen0.5b.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "method": args.method,
                "task": args.task,
                "batch_size": args.batch_size,
                "latent_steps": args.latent_steps,
                "grad_through": args.grad_through,
                "last_k": args.last_k,
                "realign": not args.no_realign,
                "loss_float32": loss32,
                "loss_bfloat16": loss16,
                "variant": variant or None,
                "variant_dtype": args.variant_dtype if has_variant else None,
                "variant_rounded_weights": args.variant_rounded_weights,
                "loss_variant": loss_v,
                "seconds": {"float32": secs32, "bfloat16": secs16, "variant": secs_v},
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
