"""Options that several commands share, declared once: which data, which system, where the output
goes, how tokens are sampled.

Each group is a dataclass mixin; a command's config inherits the groups it uses (``EvalConfig``,
``TrainConfig``, ``CollectConfig``, ``RunConfig``, ``DemoConfig``) and, where its default differs,
redeclares the option with :func:`~diffmas.config.redefault`, which keeps the help text here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from diffmas.config import option, redefault
from diffmas.errors import DiffMASError


@dataclass
class TaskOptions:
    task: str = option("synthetic-arith", "task name (see `diffmas tasks`)")


@dataclass
class DataOptions(TaskOptions):
    split: str | None = option(None, "data split (default: the task's own default)")
    data_path: str | None = option(None, "read the task's data from this local file")
    fields: str | None = option(
        None,
        "the data's field names for the task's, TASK_FIELD=FILE_FIELD comma-separated (e.g. "
        "question=prompt,answer=solution); rows without a task's field are refused with the file's field names",
    )
    offset: int | None = option(None, "skip the first N examples; negative: keep only the last |N|")
    limit: int | None = option(None, "use at most N examples (after --offset)")


@dataclass
class TrainingDataOptions(DataOptions):
    """The problems a teacher answers or a trainer learns from: a split without its held-out end."""

    task: str = redefault(DataOptions, "task", "gsm8k")
    split: str = redefault(DataOptions, "split", "train", "data split")
    exclude_last: int = option(
        0, "hold out the last N examples of the split (kept for evaluation); --offset and --limit apply to the rest"
    )


@dataclass
class SystemOptions:
    system: str | None = option(None, "built-in system name or YAML file defining the agents")
    topology: str | None = option(None, "sequential | hierarchical (picks the built-in system)")


@dataclass
class OutputOptions:
    # Where a run writes when --out is not given, filled from the config's own fields.
    default_out: ClassVar[str] = "runs/{task}"

    out: str | None = option(None, "output directory", shown_default="default_out")
    resume: bool = option(False, "continue the run already in the output directory (skip what it holds)")

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(values.get("task"), str):
            values["task"] = task_label(values["task"])
        return Path(self.default_out.format(**values))


def task_label(task: str) -> str:
    """A task as a file name: a task file by its name (``configs/tasks/shop.yaml`` -> ``shop``),
    a Python task by its class (``pkg.tasks:Mine`` -> ``Mine``), a registered task as it is."""
    if task.endswith((".yaml", ".yml")):
        return Path(task).name.split(".")[0]
    return task.rpartition(":")[2] or task


@dataclass
class SamplingOptions:
    temperature: float = option(0.0, "sampling temperature; 0 means greedy")
    top_p: float = option(1.0, "nucleus sampling mass (with temperature > 0)")
    seed: int = option(0, "random seed for sampling")


def check_samples(samples: int, temperature: float, what: str) -> None:
    """Several samples per problem need sampling: greedy decoding repeats itself."""
    if not 1 <= samples <= 64:
        raise DiffMASError(f"samples must be in [1, 64], got {samples}")
    if samples > 1 and temperature == 0:
        raise DiffMASError(
            f"greedy decoding (temperature 0) gives the same {what} every time: with --samples > 1 "
            "set --temperature (e.g. 0.7) and optionally --top-p"
        )
