"""How long `diffmas <command> --help` takes: from the stored options (what the command does) against
building the subcommand's live parser (which imports torch and transformers first), side by side.

    python benchmarks/cli_help.py [--repeats 3] [--out benchmarks/results/cli-help.json]

Each timing is a fresh interpreter (``python -c ...``), the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from diffmas.cli import SUBCOMMANDS, WITHOUT_STORED_HELP

STORED = "from diffmas.cli import main; main([{name!r}, '--help'])"
LIVE = "import importlib; importlib.import_module({module!r}).parser().format_help()"


def best_of(code: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the times as JSON here")
    args = ap.parse_args()
    rows = {}
    print(f"{'command':<9} {'stored':>8} {'live':>8} {'ratio':>7}")
    for name, (module, _) in SUBCOMMANDS.items():
        if name in WITHOUT_STORED_HELP:
            continue
        stored = best_of(STORED.format(name=name), args.repeats)
        live = best_of(LIVE.format(module=module), args.repeats)
        rows[name] = {"stored_s": round(stored, 3), "live_s": round(live, 3), "ratio": round(live / stored, 1)}
        print(f"{name:<9} {stored:>7.2f}s {live:>7.2f}s {live / stored:>6.1f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"repeats": args.repeats, "commands": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
