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
    get_task,
    list_tasks,
    register_task,
)

__all__ = ["Example", "LoadResult", "MathTask", "MultipleChoiceTask", "Task", "get_task", "list_tasks", "register_task"]
