"""The methods' registry and the one place a method is assembled from names and settings.

``diffmas eval``, ``diffmas run``, the lm-eval adapter and the benchmarks build their methods
here; the Python API needs nothing of the evaluation loop.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from diffmas.agents import load_system
from diffmas.checkpoint import read_manifest, resolve, trained_base_model
from diffmas.config import option
from diffmas.engine import LM, ModelConfig
from diffmas.errors import DiffMASError, UnknownNameError
from diffmas.methods.base import DEFAULT_LATENT_STEPS, Method, MethodConfig
from diffmas.methods.diffmas import DiffMAS
from diffmas.methods.latent_mas import LatentMAS
from diffmas.methods.single import SingleAgent
from diffmas.methods.single_sft import SingleSFT
from diffmas.methods.text_mas import TextMAS
from diffmas.models.registry import DEFAULT_MODEL
from diffmas.options import SystemOptions
from diffmas.tasks import Task

METHODS: dict[str, type[Method]] = {m.name: m for m in (SingleAgent, TextMAS, LatentMAS, DiffMAS, SingleSFT)}


def get_method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UnknownNameError("method", name, list(METHODS))
    return METHODS[name]


def build_method(
    name: str,
    lm: LM,
    config: MethodConfig,
    task: Task,
    system: str | None = None,
    topology: str | None = None,
    adapter: str | None = None,
) -> Method:
    """A method by name, with ``task``'s answer format.

    Trained methods (``adapter``) default to the system recorded in their checkpoint."""
    cls = get_method_class(name)
    if config.ablate is not None and not issubclass(cls, LatentMAS):
        raise DiffMASError(f"--ablate is for the latent methods (latent_mas, diffmas), not {name}")
    explicit = system is not None or topology is not None
    spec = load_system(system, topology) if cls.uses_system and (explicit or not cls.needs_adapter) else None
    return cls(lm, config, family=task.family, answer_format=task.answer_format, system=spec, adapter=adapter)


@dataclass
class SetupConfig(MethodConfig, ModelConfig, SystemOptions):
    """Which model and which method (with its system) to run: shared by `eval` and `run`."""

    method: str = option(
        "latent_mas", "single | text_mas | latent_mas | diffmas | single_sft (the last two: trained, with --adapter)"
    )
    adapter: str | None = option(
        None,
        "trained adapters for diffmas / single_sft: a `diffmas train` output directory, one of its checkpoints or "
        "a `diffmas export` folder (its base model, system and latent steps are used unless flags say otherwise)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        trained = self._trained_manifest()
        if self.latent_steps is None:  # not given: as the adapters were trained, else the default
            self.latent_steps = int((trained or {}).get("latent_steps", DEFAULT_LATENT_STEPS))
        if trained is not None and self.model == DEFAULT_MODEL:
            # Not given (or the default named): the model the adapters were trained on.
            self.model = trained_base_model(trained) or self.model

    def _trained_manifest(self) -> dict | None:
        if self.adapter is None:
            return None
        return read_manifest(resolve(self.adapter))

    def method_config(self) -> MethodConfig:
        return MethodConfig(**{f.name: getattr(self, f.name) for f in fields(MethodConfig)})

    def build_method(self, lm: LM, task: Task) -> Method:
        return build_method(self.method, lm, self.method_config(), task, self.system, self.topology, self.adapter)
