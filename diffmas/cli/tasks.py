"""``diffmas tasks``: list the registered tasks."""

from __future__ import annotations

import argparse

from diffmas.tasks import list_tasks


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="diffmas tasks", description="List the tasks.").parse_args(argv)
    rows = [(t.name, t.family, ", ".join(t.splits), getattr(t, "hub_id", None) or "built-in") for t in list_tasks()]
    widths = [max(len(r[i]) for r in rows + [("task", "family", "splits", "source")]) for i in range(4)]
    for row in [("task", "family", "splits", "source"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return 0
