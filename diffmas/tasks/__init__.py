"""Benchmarks: loading examples and scoring answers.

Importing this package registers the built-in tasks (gsm8k, arc_easy, arc_challenge,
synthetic-arith); other modules look them up with :func:`get_task`.
"""

from diffmas.tasks.base import (Example, LoadResult, MathTask, MultipleChoiceTask, Task, get_task,
                                list_tasks, register_task)
from diffmas.tasks import arc, gsm8k, synthetic_arith  # noqa: F401  (registers the tasks)

__all__ = ["Example", "LoadResult", "MathTask", "MultipleChoiceTask", "Task", "get_task", "list_tasks",
           "register_task"]
