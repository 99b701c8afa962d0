"""``diffmas tasks``: list the registered tasks, where their data comes from, and how big each split is.

For each split the size shown is the number of valid examples in the local file when
DIFFMAS_DATA_DIR holds one (so a user sees what an evaluation would actually run on), the number
generated for built-in tasks, and otherwise the published size of the hub split. Nothing here
touches the network, and no example text is printed (GPQA's authors ask that it never is).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffmas.errors import DataError
from diffmas.tasks import io, list_tasks
from diffmas.tasks.base import Task

# Published sizes for tasks whose modules predate Task.known_sizes.
_KNOWN_SIZES = {
    "gsm8k": {"train": 7473, "test": 1319},
    "arc_easy": {"train": 2251, "validation": 570, "test": 2376},
    "arc_challenge": {"train": 1119, "validation": 299, "test": 1172},
}


def _generated(task: Task) -> bool:
    return task.hub_id is None and not task.local_files


def hub_source(task: Task) -> str:
    if task.hub_id is None:
        return "built-in (generated)" if _generated(task) else "none"
    config = f" [{task.hub_config}]" if task.hub_config else ""
    renamed = {s: n for s, n in task.hub_split_names.items() if n != s}
    splits = f" ({'; '.join(f'{s}: hub split {n!r}' for s, n in renamed.items())})" if renamed else ""
    return f"{task.hub_id}{config}{splits}"


def local_source(task: Task) -> str:
    if not task.local_files:
        return "none"
    files = "; ".join(f"{split}: {' | '.join(names)}" for split, names in task.local_files.items())
    return f"$DIFFMAS_DATA_DIR/{task.data_subdir}/ ({files}), or --data-path FILE"


def local_file(task: Task, split: str) -> Path | None:
    root, names = io.data_dir(), task.local_files.get(split)
    if root is None or not names:
        return None
    try:
        return io.find_in_data_dir(root, task.data_subdir, names, task.name)
    except DataError:
        return None


def split_size(task: Task, split: str) -> str:
    path = local_file(task, split)
    if path is not None:
        try:
            result = task.load(split, data_path=str(path))
        except DataError as err:  # a broken local file is worth reporting, not a crash
            return f"{split}: unreadable local file {path} ({str(err).split(';')[0]})"
        skipped = f", {result.skipped} malformed rows skipped" if result.skipped else ""
        return f"{split}: {len(result.examples)} in {path}{skipped}"
    if _generated(task):
        try:
            return f"{split}: {len(task.load(split).examples)} generated"
        except DataError as err:
            return f"{split}: cannot be generated ({err})"
    known = {**_KNOWN_SIZES.get(task.name, {}), **getattr(task, "known_sizes", {})}.get(split)
    return (
        f"{split}: {known} (published size; not local)"
        if known is not None
        else f"{split}: not local (size not recorded)"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffmas tasks", description="List the tasks: family, sources (hub id, local files) and split sizes."
    )
    p.add_argument("--no-sizes", action="store_true", help="do not read local files to count examples")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    root = io.data_dir()
    print(
        f"{io.DATA_DIR_ENV}={root}"
        if root is not None
        else f"{io.DATA_DIR_ENV} is not set: sizes are published ones; local files are read only with it set"
    )
    for task in list_tasks():
        print(f"\n{task.name} ({task.family})")
        print(f"  hub:    {hub_source(task)}")
        print(f"  local:  {local_source(task)}")
        if args.no_sizes:
            print(f"  splits: {', '.join(task.splits)} (default {task.default_split})")
        else:
            sizes = [split_size(task, split) for split in task.splits]
            print(f"  splits (default {task.default_split}):")
            for line in sizes:
                print(f"    {line}")
    return 0
