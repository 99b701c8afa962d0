"""Training data: the examples of a run and a resumable, seeded stream of batches over them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffmas.errors import DataError
from diffmas.tasks import Example, Task
from diffmas.tasks.base import window


def load_examples(task: Task, split: str, data_path: str | None, exclude_last: int = 0,
                  offset: int | None = None, limit: int | None = None, seed: int = 0) -> tuple[list[Example], str]:
    """The training examples and their source: the split without its last ``exclude_last``
    examples (held out for evaluation), then ``offset``/``limit`` as everywhere else."""
    loaded = task.load(split=split, data_path=data_path, seed=seed)
    examples = loaded.examples
    if exclude_last:
        if exclude_last >= len(examples):
            raise DataError(f"exclude_last={exclude_last} leaves nothing of the {len(examples)} examples "
                            f"of {loaded.source}")
        examples = examples[:-exclude_last]
    examples = window(examples, offset, limit)
    if not examples:
        raise DataError(f"no training examples left in {loaded.source} after exclude_last/offset/limit")
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
            raise DataError(f"the checkpoint was trained on {state['size']} examples with seed {state['seed']}, "
                            f"this run has {self.size} with seed {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
