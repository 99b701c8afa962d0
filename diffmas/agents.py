"""Agents, roles and topologies of a multi-agent system, built in or read from YAML.

A system is an ordered list of agents; the last one is the *final* agent that writes the answer.

* ``sequential``: every agent sees the work of all earlier agents (planner -> critic -> refiner ->
  judger).
* ``hierarchical``: the non-final (domain) agents work independently, each seeing only the
  question; the final agent (summariser) sees all of them.

YAML form::

    name: my-system
    topology: sequential
    agents:
      - {name: Planner, role: planner}
      - {name: Checker, role: critic, prompt: "You are a careful checker of the {noun}..."}
      - {name: Judger, role: judger, question: true}   # latent methods: also state the question here
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffmas.config import from_dict, load_yaml
from diffmas.errors import DiffMASError, UnknownNameError
from diffmas.prompts import ROLE_PROMPTS, role_instruction

TOPOLOGIES = ("sequential", "hierarchical")


@dataclass
class AgentSpec:
    name: str
    role: str
    prompt: str | None = None  # overrides the role's built-in instruction; may use {noun}
    max_new_tokens: int | None = None  # text agents: overrides the method's per-agent budget
    latent_steps: int | None = None  # latent agents: overrides the method's default
    # Latent agents: state the question in this agent's prompt (True) or let it read the question
    # in the shared cache (False); None: the method's rule (its repeat_question setting).
    question: bool | None = None

    def __post_init__(self) -> None:
        if self.prompt is None and self.role not in ROLE_PROMPTS:
            raise UnknownNameError("role", self.role, list(ROLE_PROMPTS), hint="or give the agent its own 'prompt'")
        if self.latent_steps is not None and not 0 <= self.latent_steps <= 1024:
            raise DiffMASError(f"agent {self.name}: latent_steps must be in [0, 1024], got {self.latent_steps}")

    def instruction(self, family: str) -> str:
        return role_instruction(self.role, family, self.prompt)


@dataclass
class SystemSpec:
    name: str
    topology: str
    agents: list[AgentSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise UnknownNameError("topology", self.topology, list(TOPOLOGIES))
        if not self.agents:
            raise DiffMASError(f"system {self.name!r} has no agents")
        names = [a.name for a in self.agents]
        if len(set(names)) != len(names):
            raise DiffMASError(f"system {self.name!r}: agent names must be unique, got {names}")

    @property
    def final(self) -> AgentSpec:
        return self.agents[-1]

    @property
    def upstream(self) -> list[AgentSpec]:
        return self.agents[:-1]

    def sees(self, index: int) -> list[int]:
        """Indices of the earlier agents whose work agent ``index`` reads."""
        if self.topology == "hierarchical" and index < len(self.agents) - 1:
            return []
        return list(range(index))


BUILTIN_SYSTEMS: dict[str, SystemSpec] = {
    "sequential": SystemSpec(
        "sequential",
        "sequential",
        [
            AgentSpec("Planner", "planner"),
            AgentSpec("Critic", "critic"),
            AgentSpec("Refiner", "refiner"),
            AgentSpec("Judger", "judger"),
        ],
    ),
    "hierarchical": SystemSpec(
        "hierarchical",
        "hierarchical",
        [
            AgentSpec("Math", "math"),
            AgentSpec("Science", "science"),
            AgentSpec("Code", "code"),
            AgentSpec("Summariser", "summariser"),
        ],
    ),
}


def system_from_dict(data: dict, where: str = "system") -> SystemSpec:
    if not isinstance(data.get("agents"), list):
        raise DiffMASError(f"{where}: 'agents' must be a list of {{name, role[, prompt]}} entries")
    agents = []
    for i, entry in enumerate(data["agents"]):
        if not isinstance(entry, dict):
            raise DiffMASError(f"{where}: agent #{i + 1} must be a mapping, got {entry!r}")
        agents.append(from_dict(AgentSpec, entry, where=f"{where}: agent #{i + 1}"))
    rest = {k: v for k, v in data.items() if k != "agents"}
    rest.setdefault("name", Path(where).stem)
    rest.setdefault("topology", "sequential")
    return from_dict(SystemSpec, {**rest, "agents": agents}, where=where)


def load_system(name_or_path: str | None, topology: str | None = None) -> SystemSpec:
    """A built-in system by name (``sequential``/``hierarchical``) or a YAML file. ``topology``
    alone picks the built-in system of that topology."""
    key = name_or_path or topology or "sequential"
    if key in BUILTIN_SYSTEMS:
        spec = BUILTIN_SYSTEMS[key]
    elif key.endswith((".yaml", ".yml")) or Path(key).exists():
        spec = system_from_dict(load_yaml(key), where=key)
    else:
        raise UnknownNameError("system", key, list(BUILTIN_SYSTEMS), hint="or pass a YAML file")
    if topology and name_or_path and topology != spec.topology:
        spec = SystemSpec(spec.name, topology, list(spec.agents))
    return spec
