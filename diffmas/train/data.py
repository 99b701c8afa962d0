"""Training data: the examples of a run and a resumable, seeded stream of batches over them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffmas.errors import DataError
from diffmas.tasks import Example, Task
from diffmas.tasks.base import window


def load_examples(
    task: Task,
    split: str,
    data_path: str | None,
    exclude_last: int = 0,
    offset: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    fields: str | None = None,
) -> tuple[list[Example], str]:
    """The training examples and their source: the split without its last ``exclude_last``
    examples (held out for evaluation), then ``offset``/``limit`` as everywhere else."""
    loaded = task.load(split=split, data_path=data_path, seed=seed, fields=fields)
    examples = loaded.examples
    if exclude_last:
        if exclude_last >= len(examples):
            raise DataError(
                f"exclude_last={exclude_last} leaves nothing of the {len(examples)} examples of {loaded.source}"
            )
        examples = examples[:-exclude_last]
    examples = window(examples, offset, limit, f"{loaded.source} without its last {exclude_last}")
    return examples, loaded.source


@dataclass
class DataStream:
    """Endless batches of example indices: each epoch a fresh permutation drawn from
    ``(seed, epoch)``; a batch that runs past the end of an epoch continues into the next, so
    every batch is full. ``(epoch, index)`` is the whole state: restoring it resumes exactly."""

    size: int
    seed: int
    epoch: int = 0
    index: int = 0  # position in the current epoch's order

    def order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            order = self.order(self.epoch)
            chunk = order[self.index : self.index + n - len(out)]
            out.extend(chunk)
            self.index += len(chunk)
            if self.index >= self.size:
                self.epoch, self.index = self.epoch + 1, 0
        return out

    @property
    def position(self) -> float:
        """Epochs done, as a fraction."""
        return self.epoch + self.index / self.size

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise DataError(
                f"the checkpoint was trained on {state['size']} examples with seed {state['seed']}, "
                f"this run has {self.size} with seed {self.seed}"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


@dataclass
class TrainItem:
    """One training item: a problem, what the final agent learns to write, and (when training
    from `diffmas collect` trajectories) the text each agent of the teacher wrote."""

    id: str
    question: str
    target: str
    texts: list[str] | None = None


TARGETS = ("reference", "trajectory")


def build_items(
    task: Task,
    examples: list[Example],
    trajectories: list[dict] | None = None,
    target: str = "reference",
    agents: list[str] | None = None,
) -> list[TrainItem]:
    """Training items from the task's examples, or from kept trajectories of those examples.

    ``target``: the final agent learns the task's reference solution ("reference") or the
    teacher's final text ("trajectory"). ``agents``: for the two-stage schedule, the trained
    system's agent names, which the trajectories must match, each with a text (a role is learnt
    by the agent of the same name, from what it wrote).
    """
    if target not in TARGETS:
        raise DataError(f"target must be one of {TARGETS}, got {target!r}")
    if trajectories is None:
        if target == "trajectory":
            raise DataError("target 'trajectory' needs --trajectories (a `diffmas collect` output)")
        return [TrainItem(ex.id, ex.question, task.training_target(ex)) for ex in examples]
    by_id = {ex.id: ex for ex in examples}
    outside = [row["id"] for row in trajectories if row["id"] not in by_id]
    if outside:
        raise DataError(
            f"{len(outside)} trajectories (e.g. {outside[0]!r}) are of problems outside this run's "
            "training examples (held out, or another split or task); collect with the same --task, "
            "--split and --exclude-last as the training run"
        )
    items = []
    for row in trajectories:
        names = [a["agent"] for a in row["agents"]]
        if agents is not None and names != agents:
            raise DataError(
                f"trajectory {row['id']!r} was written by agents {names}, but the trained system has "
                f"{agents}; collect with the same --system/--topology"
            )
        texts = [a["text"] for a in row["agents"]]
        if agents is not None and any(t is None for t in texts):
            raise DataError(
                f"trajectory {row['id']!r} has agents without a text (a latent or single-agent teacher): "
                "the two-stage schedule (--role-steps) needs a text_mas teacher's trajectories"
            )
        ex = by_id[row["id"]]
        items.append(
            TrainItem(ex.id, ex.question, texts[-1] if target == "trajectory" else task.training_target(ex), texts)
        )
    return items
