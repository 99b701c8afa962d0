"""A model directory with a real model's architecture and tokenizer and random weights, for
throughput runs on a machine the weights cannot reach (the lent GPU machine takes no registry
traffic and at most 64 MiB of files; a 0.5B checkpoint alone is about 1 GB in bfloat16).

    python benchmarks/random_model.py spec qwen2.5-coder-0.5b-instruct .gpu/qwen0.5b   # here: config + tokenizer
    python benchmarks/random_model.py build .gpu/qwen0.5b /tmp/qwen0.5b-random         # there: random weights
    python benchmarks/random_model.py build tiny /tmp/tiny                             # the tests' tiny model

``spec`` copies what describes a model without its weights (config, generation config, tokenizer,
chat template) from a registry name (installed first with ``diffmas models install``) or a local
directory. ``build`` makes a loadable model directory from such a spec, every weight drawn from
the architecture's own initialisation with a fixed seed; ``tiny`` builds the test suite's 2-layer
model instead. Every ``diffmas`` command takes the result as ``--model DIR``.

What it is good for: the time of a forward, a latent step, a decode step or a training step does
not depend on the weights' values, so per-token and per-step costs are those of the real model.
What it is not: accuracy, and the number of tokens a method generates (random weights rarely end a
turn, so every row decodes its whole budget); compare methods there per token or at fixed budgets.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

SPEC_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def model_dir(name_or_path: str) -> Path:
    """The directory holding a registry model's files (installed), or the path given."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from diffmas.models.store import entry_dir, is_cached

    if not is_cached(name_or_path):
        raise SystemExit(f"{name_or_path!r} is not installed: run `diffmas models install {name_or_path}` first")
    return entry_dir(name_or_path)


def write_spec(source: str, out: Path) -> list[str]:
    """Copy the weightless files of ``source`` into ``out``; returns their names."""
    src = model_dir(source)
    if not (src / "config.json").is_file():
        raise SystemExit(f"{src} has no config.json: not a model directory")
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SPEC_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            copied.append(name)
    return copied


def build(spec: str, out: Path, dtype: str = "bfloat16", seed: int = 0) -> None:
    """Write a loadable model with random weights into ``out``."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    if spec == "tiny":
        from diffmas.models import build_tiny_model

        model, tokenizer = build_tiny_model(seed=seed, dtype=getattr(torch, dtype))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    src = Path(spec)
    config = AutoConfig.from_pretrained(src)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    for name in SPEC_FILES[1:]:  # the config was written by save_pretrained
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("spec", help="copy a model's config and tokenizer, not its weights")
    s.add_argument("source", help="a registry name (installed) or a model directory")
    s.add_argument("out", type=Path)
    b = sub.add_parser("build", help="a model directory with random weights from a spec")
    b.add_argument("spec", help="a directory written by `spec`, or 'tiny'")
    b.add_argument("out", type=Path)
    b.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    b.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.command == "spec":
        names = write_spec(args.source, args.out)
        size = sum((args.out / n).stat().st_size for n in names) / 2**20
        print(f"{args.out}: {', '.join(names)} ({size:.1f} MiB)")
    else:
        build(args.spec, args.out, args.dtype, args.seed)
        print(f"{args.out}: random weights ({args.dtype}, seed {args.seed}) with the architecture of {args.spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
