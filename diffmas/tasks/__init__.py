"""Benchmarks: loading examples and scoring answers.

Importing this package registers the built-in tasks (one module each); other modules look
them up with :func:`get_task`.
"""

from diffmas.tasks import (  # noqa: F401  (registers them)
    aime,
    arc,
    code,
    commonsenseqa,
    gpqa,
    gsm8k,
    math500,
    medqa,
    strategyqa,
    synthetic_arith,
    winogrande,
)
from diffmas.tasks.base import (
    Example,
    LoadResult,
    MathTask,
    MultipleChoiceTask,
    Task,
    list_tasks,
    register_task,
)
from diffmas.tasks.base import get_task as _registered_task
from diffmas.tasks.user import load_task_file, load_task_module


def get_task(name: str) -> Task:
    """A task by registered name, from a YAML task file (``my-task.yaml``), or from Python
    (``package.module:Name``); see :mod:`diffmas.tasks.user`."""
    if name.endswith((".yaml", ".yml")):
        return load_task_file(name)
    if ":" in name and not name.startswith(("/", ".")):
        return load_task_module(name)
    return _registered_task(name)


__all__ = ["Example", "LoadResult", "MathTask", "MultipleChoiceTask", "Task", "get_task", "list_tasks", "register_task"]
