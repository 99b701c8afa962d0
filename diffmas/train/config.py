"""``TrainConfig``: every setting of a training run, from YAML and the command line.

Also the two schedules that depend only on the step: the learning-rate multiplier (warm-up, then
cosine or linear decay) and the latent-step curriculum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from diffmas.adapters import LoraSettings
from diffmas.config import option
from diffmas.engine import ModelConfig
from diffmas.errors import DiffMASError
from diffmas.latent import LATENT_INPUTS
from diffmas.options import OutputOptions, SystemOptions, TrainingDataOptions
from diffmas.train.data import TARGETS
from diffmas.train.objective import GRAD_THROUGH, ObjectiveConfig
from diffmas.train.tracking import parse_report_to

TRAIN_METHODS = ("diffmas", "single_sft")
SCHEDULES = ("cosine", "linear", "constant")
# Settings that change what is trained or on which data: a resumed run must keep them.
FIXED_ON_RESUME = (
    "method",
    "model",
    "task",
    "split",
    "data_path",
    "fields",
    "offset",
    "limit",
    "exclude_last",
    "system",
    "trajectories",
    "target",
    "role_steps",
    "topology",
    "realign",
    "latent_input",
    "soft_temperature",
    "repeat_question",
    "comm_adapter",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "shared_adapter",
    "seed",
    "batch_size",
    "grad_accum",
)


@dataclass
class TrainConfig(ModelConfig, SystemOptions, TrainingDataOptions, OutputOptions):
    default_out: ClassVar[str] = "runs/train-{task}-{method}"

    # -- what is trained --------------------------------------------------------------------
    method: str = option(
        "diffmas",
        "diffmas (latent MAS, one LoRA per agent) | single_sft (one agent, one LoRA: the control)",
        choices=TRAIN_METHODS,
    )
    latent_steps: int = option(10, "latent steps per upstream agent (without a curriculum; the ramp's end)")
    realign: bool = option(True, "start latent inputs from the ridge realignment (else the identity)")
    latent_input: str = option(
        "hidden",
        "what a latent step feeds back: hidden (the realigned last hidden state, as LatentMAS) | soft (the "
        "input embedding expected under its next-token distribution; no communication adapter)",
        choices=LATENT_INPUTS,
    )
    soft_temperature: float = option(1.0, "temperature of the soft latent input's next-token distribution")
    repeat_question: bool = option(
        False,
        "state the question in every agent's prompt (default: only where the "
        "agent cannot read it in the shared cache; evaluate with the same setting)",
    )
    comm_adapter: bool = option(True, "train the hidden-state -> latent-input map too (diffmas)")
    # -- data ---------------------------------------------------------------------------------
    trajectories: str | None = option(
        None,
        "train on the kept trajectories of `diffmas collect` (its output "
        "directory or trajectories.jsonl) instead of every example",
    )
    target: str = option(
        "reference",
        "what the final agent learns: reference (the task's solution) | trajectory (the teacher's final text)",
        choices=TARGETS,
    )
    role_steps: int = option(
        0,
        "two-stage schedule: first N optimizer steps teach every agent its own role's "
        "text from the trajectories, then the joint latent protocol (diffmas)",
    )
    # -- LoRA ---------------------------------------------------------------------------------
    lora_rank: int = option(8, "LoRA rank")
    lora_alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank)")
    lora_dropout: float = option(0.05, "dropout on the LoRA input")
    lora_targets: list[str] | None = option(None, "module names to adapt (default: the attention projections)")
    shared_adapter: bool = option(False, "one LoRA shared by all agents instead of one per agent")
    lora_float32: bool = option(
        True,
        "run the LoRA products in float32, inputs cast to it (PEFT's default), "
        "not in the model's dtype; the LoRA weights are float32 either way",
    )
    # -- objective ----------------------------------------------------------------------------
    grad_through: str = option("full", "how far gradients reach upstream: none | full | last_k", choices=GRAD_THROUGH)
    last_k: int = option(1, "with grad_through last_k: latent steps per upstream agent that get gradients")
    comm_dropout: float = option(0.0, "probability of hiding an upstream agent from the final agent, per example")
    trace_cache: bool = option(
        True,
        "with grad_through none (reader training): build each example's upstream trace once, keep it on "
        "disk and read it at every later step (diffmas.train.traces)",
    )
    trace_dir: str | None = option(
        None, "where the upstream traces are kept (default: $DIFFMAS_TRACE_DIR or ~/.cache/diffmas/traces)"
    )
    curriculum: list[str] | None = option(
        None, "latent steps by step: YAML [[0, 2], [100, 5]] or --curriculum 0:2 100:5 (from step s use n)"
    )
    ramp_steps: int = option(
        0,
        "instead of a curriculum: ramp latent steps linearly from --ramp-start to --latent-steps over this many steps",
    )
    ramp_start: int = option(1, "first value of the linear latent-step ramp")
    # -- optimisation -------------------------------------------------------------------------
    lr: float = option(2e-4, "peak learning rate of the LoRA adapters")
    comm_lr: float | None = option(None, "learning rate of the communication adapter (default: --lr)")
    weight_decay: float = option(0.0, "AdamW weight decay of the LoRA weights (never of the comm adapter)")
    warmup_steps: int = option(0, "linear warm-up steps")
    schedule: str = option("cosine", "decay after warm-up: cosine | linear | constant", choices=SCHEDULES)
    min_lr_ratio: float = option(0.0, "final learning rate as a fraction of the peak")
    max_grad_norm: float = option(1.0, "clip the global gradient norm (0: no clipping)")
    batch_size: int = option(4, "examples per micro-batch (per process)")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    max_steps: int | None = option(None, "optimizer steps (default: from --epochs)")
    epochs: float = option(1.0, "passes over the data when --max-steps is not given")
    until_step: int | None = option(
        None,
        "stop after this step and checkpoint it; the schedule still spans "
        "--max-steps, and --resume continues (a run split over sessions)",
    )
    max_bad_steps: int = option(5, "stop after this many steps in a row skipped for a NaN or infinite loss")
    gradient_checkpointing: bool = option(
        False,
        "recompute the decoder MLP blocks' activations in the backward "
        "pass: less memory, more time (see diffmas.train.memory)",
    )
    mixed_precision: str | None = option(
        None,
        "no | bf16 | fp16 (GPU): run the forward products under autocast in that precision while the weights "
        "keep --dtype (default: accelerate's setting, `accelerate launch --mixed_precision` or `accelerate "
        "config`, else no)",
        choices=("no", "bf16", "fp16"),
    )
    seed: int = option(0, "seed of the adapters' initialisation, data order and dropout")
    # -- output -------------------------------------------------------------------------------
    save_every: int = option(100, "write a checkpoint every N steps (and always at the end)")
    keep_checkpoints: int = option(2, "keep the N most recent step checkpoints (0: keep all)")
    log_every: int = option(1, "write a log line every N steps")
    report_to: str | None = option(
        None,
        "also log every step to these trackers, comma-separated: tensorboard, wandb, or any other tracker "
        "accelerate knows (its package installed); files under <out>/trackers",
    )

    def __post_init__(self) -> None:
        if self.method not in TRAIN_METHODS:
            raise DiffMASError(f"method must be one of {TRAIN_METHODS}, got {self.method!r}")
        if self.schedule not in SCHEDULES:
            raise DiffMASError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        positive = ("batch_size", "grad_accum", "save_every", "log_every", "lora_rank", "max_bad_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise DiffMASError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.role_steps and (self.method != "diffmas" or not self.trajectories):
            raise DiffMASError("role_steps (the two-stage schedule) needs --method diffmas and --trajectories")
        if self.target == "trajectory" and not self.trajectories:
            raise DiffMASError("--target trajectory needs --trajectories (a `diffmas collect` output)")
        for name in ("role_steps", "exclude_last", "warmup_steps", "ramp_steps", "keep_checkpoints", "latent_steps"):
            if getattr(self, name) < 0:
                raise DiffMASError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.until_step is not None and self.until_step < 1:
            raise DiffMASError(f"until_step must be at least 1, got {self.until_step}")
        if self.max_steps is not None and self.max_steps < 1:
            raise DiffMASError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.max_steps is None and self.epochs <= 0:
            raise DiffMASError(f"epochs must be > 0, got {self.epochs}")
        if self.lr <= 0 or (self.comm_lr is not None and self.comm_lr <= 0):
            raise DiffMASError(
                "learning rates must be positive (to freeze the communication map, pass --no-comm-adapter)"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise DiffMASError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.latent_input not in LATENT_INPUTS:
            raise DiffMASError(f"latent_input must be one of {LATENT_INPUTS}, got {self.latent_input!r}")
        if self.soft_temperature <= 0:
            raise DiffMASError(f"soft_temperature must be positive, got {self.soft_temperature}")
        if self.latent_input == "soft" and self.comm_adapter and self.method == "diffmas":
            raise DiffMASError(
                "the communication adapter maps hidden states, which --latent-input soft does not feed back: "
                "pass --no-comm-adapter (or comm_adapter: false) with it"
            )
        if self.curriculum is not None and self.ramp_steps:
            raise DiffMASError("give either a curriculum or ramp_steps, not both")
        if self.curriculum is not None:
            self.curriculum = parse_curriculum(self.curriculum)
        parse_report_to(self.report_to)  # a misspelt tracker is refused before anything loads
        self.objective()  # validates grad_through, last_k, comm_dropout
        self.lora()

    def objective(self) -> ObjectiveConfig:
        return ObjectiveConfig(self.grad_through, self.last_k, self.comm_dropout)

    def lora(self) -> LoraSettings:
        return LoraSettings(
            self.lora_rank,
            self.lora_alpha,
            self.lora_dropout,
            self.lora_targets,
            self.shared_adapter,
            self.lora_float32,
        )

    # -- schedules ----------------------------------------------------------------------------
    def latent_steps_at(self, step: int) -> int:
        """Latent steps per upstream agent for optimizer step ``step`` (0-based)."""
        if self.curriculum:
            n = self.curriculum[0][1]
            for start, value in self.curriculum:
                if step >= start:
                    n = value
            return n
        if self.ramp_steps:
            frac = min(1.0, step / self.ramp_steps)
            return round(self.ramp_start + frac * (self.latent_steps - self.ramp_start))
        return self.latent_steps

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of the peak learning rate at optimizer step ``step`` of ``total``."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return 1.0
        span = max(1, total - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * decay


def parse_curriculum(entries) -> list[list[int]]:
    """``[[0, 2], [100, 5]]`` or ``["0:2", "100:5"]`` -> sorted [[step, latent_steps], ...]."""
    pairs = []
    for entry in entries:
        try:
            if isinstance(entry, str):
                start, value = entry.replace("=", ":").split(":")
            else:
                start, value = entry
            pair = [int(start), int(value)]
        except (TypeError, ValueError):
            raise DiffMASError(
                f"curriculum entry {entry!r} must be [step, latent_steps] or 'step:latent_steps'"
            ) from None
        if pair[0] < 0 or not 0 <= pair[1] <= 1024:
            raise DiffMASError(f"curriculum entry {entry!r}: step must be >= 0 and latent steps in [0, 1024]")
        pairs.append(pair)
    if not pairs:
        raise DiffMASError("curriculum is empty")
    pairs.sort()
    if len({p[0] for p in pairs}) != len(pairs):
        raise DiffMASError(f"curriculum names a step twice: {pairs}")
    return pairs
