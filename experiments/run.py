"""Run an experiment folder: collect, train, evaluate and compare, each step resumable.

    DIFFMAS_DATA_DIR=../shared/data python experiments/run.py experiments/reader-qwen0.5b-dev
    python experiments/run.py experiments/NAME --only train:diffmas eval:diffmas   # some steps
    python experiments/run.py experiments/NAME --dry-run                            # print the commands
    python experiments/run.py experiments/NAME --set device=cuda --set eval.batch_size=64 --runs /tmp/runs

An experiment is a folder with an ``experiment.yaml``:

    runs: runs/experiments/reader-qwen0.5b-dev   # collect and train outputs (large, not committed)
    steps:
      - collect: {name: own-words, config: configs/collect-gsm8k-qwen0.5b.yaml, limit: 256}
      - train: {name: diffmas, config: configs/reader-gsm8k-qwen0.5b.yaml, trajectories: "@collect:own-words"}
      - eval: {name: single, method: single, task: gsm8k, split: train, offset: -1000, limit: 200}
      - eval: {name: diffmas, method: diffmas, adapter: "@train:diffmas", ...}
      - compare: {}

Each step is one ``diffmas`` command: its keys become flags (``limit: 256`` -> ``--limit 256``,
``true`` -> ``--flag``, ``false`` -> ``--no-flag``), and ``@KIND:NAME`` names the output of an
earlier step. Collect and train write under ``runs``; evaluations write into the folder's
``results/NAME`` (records and summary, committed with the experiment); compare writes
``results/compare``. Every step runs with ``--resume``, so a killed or session-split run picks
up where it stopped; a finished training run (its ``final`` checkpoint) is not started again.

A collect step's attempts are also kept in ``results/collect-NAME/`` (the model's texts and
scores, without the dataset's questions and answers), committed with the experiment: where
``runs`` has lost them (a new checkout), the step starts from that copy, so a collection made in
one session trains the systems of the next without being made again. ``from: FOLDER`` on a
collect step makes it the step of the same name in another experiment (its options must be the
same): both use, and keep, that folder's copy, so two experiments train on one collection.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

KINDS = ("collect", "train", "eval", "compare")
ATTEMPTS, COLLECT_SETTINGS = "attempts.jsonl", "collect_config.json"  # as diffmas.train.collect writes them
DATASET_FIELDS = ("question", "gold")  # read back from the task's data by id; not committed


def kept_copy(folder: Path, name: str) -> Path:
    return folder / "results" / f"collect-{name}"


def publish_collect(out: Path, copy: Path) -> None:
    """Copy a collect output's attempts (without the dataset's fields) and settings to ``copy``."""
    copy.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (out / ATTEMPTS).read_text().splitlines() if line.strip()]
    lines = [json.dumps({k: v for k, v in row.items() if k not in DATASET_FIELDS}) for row in rows]
    (copy / ATTEMPTS).write_text("".join(line + "\n" for line in lines))
    for extra in (COLLECT_SETTINGS, "summary.json"):
        if (out / extra).is_file():
            shutil.copyfile(out / extra, copy / extra)


def seed_collect(out: Path, copy: Path) -> bool:
    """Start a collect output that ``runs`` lost from the experiment's committed copy."""
    if (out / ATTEMPTS).exists() or not (copy / ATTEMPTS).is_file():
        return False
    out.mkdir(parents=True, exist_ok=True)
    for name in (ATTEMPTS, COLLECT_SETTINGS):
        if (copy / name).is_file():
            shutil.copyfile(copy / name, out / name)
    return True


class ExperimentError(Exception):
    pass


def load(folder: Path) -> tuple[dict, list[tuple[str, str, dict]]]:
    """The experiment's settings and its steps as (kind, name, options), shared collections
    (``from:``) resolved into ``spec["kept_in"]``."""
    spec, steps = read_steps(folder)
    for kind, name, options in steps:
        if kind == "collect" and "from" in options:
            spec.setdefault("kept_in", {})[name] = shared_collect(folder, name, options)
    return spec, steps


def read_steps(folder: Path) -> tuple[dict, list[tuple[str, str, dict]]]:
    """The experiment.yaml's settings and steps, checked, as written."""
    path = folder / "experiment.yaml"
    if not path.is_file():
        raise ExperimentError(f"{path} does not exist: an experiment folder holds an experiment.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    steps = []
    for i, entry in enumerate(spec.get("steps") or []):
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
            raise ExperimentError(f"{path}: step {i + 1} must be one of {KINDS} with its options, got {entry!r}")
        kind, options = next(iter(entry.items()))
        options = dict(options or {})
        name = str(options.pop("name", kind))
        if any(k == kind and n == name for k, n, _ in steps):
            raise ExperimentError(f"{path}: two {kind} steps are named {name!r}")
        steps.append((kind, name, options))
    if not steps:
        raise ExperimentError(f"{path} has no steps")
    return spec, steps


def shared_collect(folder: Path, name: str, options: dict) -> Path:
    """The folder whose collect step NAME this one is (``from:``), checked to have its options.
    Read without resolving its own ``from:``, so folders that name each other cannot loop."""
    path, other = folder / "experiment.yaml", Path(str(options.pop("from")))
    try:
        _, theirs = read_steps(other)
    except ExperimentError:
        theirs = []
    match = [o for k, n, o in theirs if k == "collect" and n == name]
    if not match:
        raise ExperimentError(f"{path}: collect {name!r} is from {other}, which has no collect step of that name")
    if "from" in match[0]:
        raise ExperimentError(
            f"{path}: collect {name!r} is from {other}, whose step is from another folder: name that one"
        )
    if match[0] != options:
        raise ExperimentError(
            f"{path}: collect {name!r} must have the options of its step in {other} ({match[0]}), got {options}"
        )
    return other


def output_of(folder: Path, runs: Path, kind: str, name: str) -> Path:
    if kind in ("collect", "train"):
        return runs / f"{kind}-{name}"
    return folder / "results" / name


def flags(options: dict, resolve) -> list[str]:
    """``{limit: 256, resume: true, by_length: false}`` -> ``--limit 256 --resume --no-by-length``."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            out += [flag, *(resolve(str(v)) for v in value)]
        elif value is not None:
            out += [flag, resolve(str(value))]
    return out


def overrides(settings: list[str]) -> dict[str, dict]:
    """``["device=cuda", "eval.batch_size=64"]`` -> ``{"collect": {...}, "train": {...}, "eval": {...}}``:
    a bare key applies to every collect, train and eval step, ``KIND.key`` to that kind's."""
    out: dict[str, dict] = {kind: {} for kind in KINDS[:3]}
    for item in settings:
        key, sep, value = item.partition("=")
        kind, dot, name = key.rpartition(".")
        if not sep or not name or (dot and kind not in out):
            raise ExperimentError(f"--set {item!r}: expected KEY=VALUE or KIND.KEY=VALUE, KIND one of {list(out)}")
        for k in [kind] if dot else out:
            out[k][name] = yaml.safe_load(value)
    return out


def commands(
    folder: Path, spec: dict, steps, runs: Path | None = None, extra: dict[str, dict] | None = None
) -> list[tuple[str, str, list[str] | None]]:
    """(kind, name, argv of ``diffmas``) per step; None: nothing left to do. ``runs`` replaces the
    folder's own; ``extra`` (:func:`overrides`) adds or replaces step options."""
    runs = runs or Path(spec.get("runs") or f"runs/experiments/{folder.name}")
    extra = extra or {}
    done = {(k, n) for k, n, _ in steps}

    def resolve(value: str) -> str:
        if value.startswith("@"):
            kind, _, name = value[1:].partition(":")
            if (kind, name) not in done:
                raise ExperimentError(f"{value}: no {kind} step named {name!r} in {folder}")
            return str(output_of(folder, runs, kind, name))
        return value

    out = []
    for kind, name, options in steps:
        target = output_of(folder, runs, kind, name)
        if kind == "compare":
            evals = [output_of(folder, runs, "eval", n) for k, n, _ in steps if k == "eval"]
            argv = ["compare", *map(str, evals), "--out", str(target), *flags(options, resolve)]
        elif kind == "train" and (target / "final" / "manifest.json").exists():
            argv = None  # finished
        else:
            argv = [kind, *flags({**options, **extra.get(kind, {})}, resolve), "--out", str(target), "--resume"]
        out.append((kind, name, argv))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="the experiment folder (holds experiment.yaml)")
    p.add_argument("--only", nargs="+", default=None, metavar="KIND:NAME", help="run only these steps")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[KIND.]KEY=VALUE",
        help="add or replace an option of every collect, train and eval step, or of one kind's "
        "(--set device=cuda --set eval.batch_size=64): where and how fast, for another machine",
    )
    p.add_argument("--runs", type=Path, default=None, help="collect and train outputs here, not the folder's `runs`")
    args = p.parse_args(argv)
    try:
        spec, steps = load(args.folder)
        plan = commands(args.folder, spec, steps, args.runs, overrides(args.set))
    except ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.only is not None:
        unknown = set(args.only) - {f"{k}:{n}" for k, n, _ in plan}
        if unknown:
            print(f"error: no steps {sorted(unknown)} in {args.folder}", file=sys.stderr)
            return 2
        plan = [s for s in plan if f"{s[0]}:{s[1]}" in args.only]
    report = []
    for kind, name, argv in plan:
        if argv is None:
            print(f"== {kind}:{name}: done", flush=True)
            report.append((kind, name, "done", 0.0))
            continue
        line = "diffmas " + shlex.join(argv)
        print(f"== {kind}:{name}: {line}", flush=True)
        if args.dry_run:
            continue
        started = time.perf_counter()
        target = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
        copy = kept_copy(spec.get("kept_in", {}).get(name, args.folder), name)
        if kind == "collect" and seed_collect(target, copy):
            print(f"   (its attempts so far from {copy})", flush=True)
        rc = subprocess.run([sys.executable, "-m", "diffmas", *argv]).returncode
        if kind == "collect" and rc == 0:
            publish_collect(target, copy)
        report.append((kind, name, "ok" if rc == 0 else f"failed (exit {rc})", time.perf_counter() - started))
        if rc != 0:
            print(f"step {kind}:{name} failed with exit code {rc}; fix it and rerun: finished steps are kept")
            break
    for kind, name, status, seconds in report:
        print(f"{kind}:{name:24s} {status:18s} {seconds / 60:7.1f} min")
    return 0 if all(r[2] in ("ok", "done") for r in report) else 1


if __name__ == "__main__":
    raise SystemExit(main())
