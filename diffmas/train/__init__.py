"""Training the latent communication end to end: per-agent LoRA adapters, the trajectory loss."""

from __future__ import annotations

from diffmas.train.adapters import AgentAdapters, LoraSettings, attention_projections
from diffmas.train.objective import GRAD_THROUGH, ObjectiveConfig, TrajectoryLoss, target_ids, trajectory_loss

__all__ = ["GRAD_THROUGH", "AgentAdapters", "LoraSettings", "ObjectiveConfig", "TrajectoryLoss",
           "attention_projections", "target_ids", "trajectory_loss"]
