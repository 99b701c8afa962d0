"""What ``--stop-loops N`` would have changed in finished evaluation runs, read from their outputs.

    python benchmarks/diagnostics/loop_replay.py benchmarks/results/gsm8k-final500-qwen0.5b/* --window 64

Decoding is causal, so a text stopped by the loop check is a prefix of the text decoded without
it. This script re-tokenises every saved output with the run's tokenizer, finds the first place
where the last ``--window`` tokens form a loop (:func:`diffmas.decoding.looping`, the check the
decoder uses), and scores the text cut there with the task's own scoring. It prints, per run: the
outputs that would stop early, the generated tokens saved, and the answers that would change,
gained or lost. No model is run. Approximate in two ways: re-tokenising decoded text can differ
from the ids the model produced, and in bfloat16 the rows sharing a batch (which change when rows
stop earlier) can change other rows' rounding; a real run with ``--stop-loops`` measures both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffmas.decoding import looping
from diffmas.evaluate import saved_run
from diffmas.models import load_model


def first_loop(ids: list[int], window: int) -> int | None:
    """The length at which decoding with ``stop_loops=window`` would have stopped, or None."""
    return next((n for n in range(window, len(ids) + 1) if looping(ids[:n], window)), None)


def replay(run: Path, window: int, tokenizers: dict) -> dict:
    summary, cfg, task, loaded, records = saved_run(run)
    if cfg.model not in tokenizers:  # the one loader of every kind of model name; the weights are dropped
        tokenizers[cfg.model] = load_model(cfg.model, cache_dir=cfg.cache_dir, packed=False, cpu_attention=False)[1]
    tok = tokenizers[cfg.model]
    examples = {ex.id: ex for ex in loaded.examples}
    cut = saved = changed = gained = lost = 0
    for r in records:
        ids = tok(r["output"], add_special_tokens=False)["input_ids"]
        stop = first_loop(ids, window)
        if stop is None:
            continue
        cut += 1
        saved += max(0, r["generated_tokens"] - stop)
        prediction, correct = task.score(tok.decode(ids[:stop]), examples[r["id"]])
        changed += prediction != r["prediction"]
        gained += correct and not r["correct"]
        lost += r["correct"] and not correct
    tokens = sum(r["generated_tokens"] for r in records)
    return {
        "run": str(run),
        "method": summary["method"],
        "n": len(records),
        "cut": cut,
        "tokens": tokens,
        "tokens_saved": saved,
        "answers_changed": changed,
        "gained": gained,
        "lost": lost,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="evaluation run directories (records.jsonl and summary.json)")
    p.add_argument("--window", type=int, default=64, help="the --stop-loops value to replay")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    tokenizers: dict = {}
    runs = [Path(r) for r in args.runs if (Path(r) / "records.jsonl").is_file()]
    for other in sorted(set(map(Path, args.runs)) - set(runs)):
        print(f"skipped {other}: not an evaluation run directory")
    rows = [replay(run, args.window, tokenizers) for run in runs]
    print(f"--stop-loops {args.window}, replayed on saved outputs\n")
    print(
        "| run | method | outputs | stopped early | tokens saved | answers changed | right -> wrong | wrong -> right |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = r["tokens_saved"] / r["tokens"] if r["tokens"] else 0.0
        print(
            f"| {r['run']} | {r['method']} | {r['n']} | {r['cut']} | {r['tokens_saved']} ({100 * share:.1f}%) | "
            f"{r['answers_changed']} | {r['lost']} | {r['gained']} |"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"window": args.window, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
