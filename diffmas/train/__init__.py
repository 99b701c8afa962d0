"""Training the latent communication end to end: per-agent LoRA adapters, the trajectory loss,
the trainer and its checkpoints."""

from __future__ import annotations

from diffmas.adapters import AgentAdapters, LoraSettings, attention_projections
from diffmas.train.config import TrainConfig
from diffmas.train.objective import GRAD_THROUGH, ObjectiveConfig, TrajectoryLoss, target_ids, trajectory_loss
from diffmas.train.trainer import Trainer, train

__all__ = [
    "GRAD_THROUGH",
    "AgentAdapters",
    "LoraSettings",
    "ObjectiveConfig",
    "TrainConfig",
    "Trainer",
    "TrajectoryLoss",
    "attention_projections",
    "target_ids",
    "train",
    "trajectory_loss",
]
