"""DiffMAS: multi-agent LLM systems that communicate through (trainable) latent KV-cache state.

    import diffmas

    system = diffmas.pipeline("latent_mas", task="gsm8k", latent_steps=10)
    print(system("What is 12 * 7?").prediction)

``diffmas.pipeline``, ``diffmas.load``, ``diffmas.evaluate`` and the classes below are imported
on first use, so that ``import diffmas`` (and every ``diffmas`` command's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute)
_EXPORTS = {
    "pipeline": ("diffmas.api", "pipeline"),
    "load": ("diffmas.api", "load"),
    "evaluate": ("diffmas.api", "evaluate_method"),
    "System": ("diffmas.api", "System"),
    "Answer": ("diffmas.api", "Answer"),
    "LM": ("diffmas.engine", "LM"),
    "ModelConfig": ("diffmas.engine", "ModelConfig"),
    "SetupConfig": ("diffmas.methods", "SetupConfig"),
    "MethodConfig": ("diffmas.methods", "MethodConfig"),
    "Trace": ("diffmas.methods", "Trace"),
    "build_method": ("diffmas.methods", "build_method"),
    "EvalConfig": ("diffmas.evaluate", "EvalConfig"),
    "TrainConfig": ("diffmas.train", "TrainConfig"),
    "train": ("diffmas.train", "train"),
    "get_task": ("diffmas.tasks", "get_task"),
    "load_system": ("diffmas.agents", "load_system"),
    "DiffMASError": ("diffmas.errors", "DiffMASError"),
}
__all__ = [
    "__version__",
    "pipeline",
    "load",
    "evaluate",
    "System",
    "Answer",
    "LM",
    "ModelConfig",
    "SetupConfig",
    "MethodConfig",
    "Trace",
    "build_method",
    "EvalConfig",
    "TrainConfig",
    "train",
    "get_task",
    "load_system",
    "DiffMASError",
]
assert set(__all__) == {"__version__", *_EXPORTS}

if TYPE_CHECKING:
    from diffmas.agents import load_system
    from diffmas.api import Answer, System, load, pipeline
    from diffmas.api import evaluate_method as evaluate
    from diffmas.engine import LM, ModelConfig
    from diffmas.errors import DiffMASError
    from diffmas.evaluate import EvalConfig
    from diffmas.methods import MethodConfig, SetupConfig, Trace, build_method
    from diffmas.tasks import get_task
    from diffmas.train import TrainConfig, train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffmas' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
