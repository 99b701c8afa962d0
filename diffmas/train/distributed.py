"""The trainer's processes and precision, through accelerate's ``Accelerator``.

``accelerate launch`` (or ``torchrun``) starts the processes; the Accelerator joins them (gloo on
the CPU, NCCL on GPUs), names this process's rank, and applies accelerate's mixed precision
(``--mixed-precision`` or accelerate's own configuration): the products run under autocast in
bfloat16 or float16 while the weights keep their dtype, with a gradient scaler for float16. Each
process takes its own slice of every global batch; gradients are averaged across processes in one
all-reduce per dtype before clipping, so every process holds the same adapters after every step.

FSDP and DeepSpeed are refused with a message: they shard the parameters under the model's own
forward, while a DiffMAS trajectory drives the decoder agent by agent over one shared KV trace
with a different LoRA adapter active for each agent.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from diffmas.errors import DiffMASError

logger = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "bf16", "fp16")
# What `accelerate launch` / `accelerate config` set when a sharding backend is chosen.
SHARDING_ENV = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def one_process_of_several() -> bool:
    """Whether ``accelerate launch`` asked for several processes and started one: it then sets
    the rendezvous address for them but no WORLD_SIZE (its simple launcher, without --multi_gpu)."""
    launched = "ACCELERATE_MIXED_PRECISION" in os.environ
    return launched and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ


def resolve_mixed_precision(value: str | None, device: str) -> str:
    """``--mixed-precision`` if given, else accelerate's launch setting, else "no"; checked."""
    chosen = value or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
    if chosen not in MIXED_PRECISION:
        raise DiffMASError(f"mixed precision must be one of {', '.join(MIXED_PRECISION)}, got {chosen!r}")
    if chosen == "fp16" and not device.startswith("cuda"):
        raise DiffMASError(
            "fp16 mixed precision needs a GPU (its gradient scaler runs on CUDA); on the CPU use --mixed-precision "
            "bf16, or load the model in bfloat16 with --dtype bfloat16"
        )
    return chosen


def check_no_sharding() -> None:
    for env, name in SHARDING_ENV.items():
        if os.environ.get(env, "").lower() in ("1", "true", "yes"):
            raise DiffMASError(
                f"accelerate's configuration selects {name} ({env}), which the DiffMAS trainer does not support: "
                "a trajectory runs the decoder agent by agent over one shared KV trace, with another LoRA adapter "
                "active for each agent, outside the model's own forward that sharding wraps. Train data parallel "
                "instead (`accelerate launch --multi_gpu`, the adapters and the frozen base on every device), "
                "with --mixed-precision bf16 and --gradient-checkpointing to save memory"
            )


def _accelerator(device: str, mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision:
        # accelerate keeps one precision per process; a second run in this process (the Python
        # API, tests) with another one starts that state again. The processes stay joined.
        AcceleratorState._reset_state(reset_partial_state=False)
    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="OMP_NUM_THREADS/MKL_NUM_THREADS unset")
        accelerator = Accelerator(cpu=not device.startswith("cuda"), mixed_precision=mixed_precision)
    # Joining CPU processes, accelerate sets its own thread count where OMP_NUM_THREADS is unset
    # (all the cores per process on one machine): keep the one this process chose.
    torch.set_num_threads(threads)
    return accelerator


@dataclass
class Distributed:
    """This process's place among the data-parallel processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mixed_precision: str = "no"
    accelerator: Any = field(default=None, repr=False)

    @classmethod
    def from_env(cls, device: str, mixed_precision: str | None = None) -> Distributed:
        check_no_sharding()
        precision = resolve_mixed_precision(mixed_precision, device)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and one_process_of_several():
            logger.warning(
                "accelerate launch started 1 process although more were asked for: it starts several "
                "only with --multi_gpu (on CPU too: `accelerate launch --multi_gpu --num_processes N`) "
                "or use `torchrun --nproc_per_node N -m diffmas train ...`; training on 1 process"
            )
        acc = _accelerator(device, precision)
        out = cls(acc.process_index, acc.num_processes, acc.local_process_index, precision, acc)
        if out.world == 1:
            logger.info("training on 1 process (mixed precision: %s)", precision)
        elif out.main:
            backend = torch.distributed.get_backend()
            logger.warning(
                "training on %d processes (data parallel, %s; mixed precision: %s)", out.world, backend, precision
            )
        return out

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def scaler(self):
        """float16's gradient scaler (None otherwise)."""
        return getattr(self.accelerator, "scaler", None)

    def autocast(self) -> AbstractContextManager:
        """Mixed precision for the forward pass (nothing without it)."""
        if self.accelerator is None or self.mixed_precision == "no":
            return nullcontext()
        return self.accelerator.autocast()

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer, wrapped by accelerate where mixed precision needs it (float16's scaler
        unscales, skips overflowing steps and lowers its scale)."""
        if self.scaler is None:
            return optimizer
        return self.accelerator.prepare_optimizer(optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm_(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Clip the (averaged) gradients; the norm is that of the true, unscaled gradients."""
        if self.scaler is not None:
            self.accelerator.unscale_gradients()
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def check_identical(self, tensors: list[torch.Tensor], what: str) -> None:
        """Raise if the processes hold different values of ``tensors`` (a checksum per process,
        gathered): data parallelism is only correct while every process has the same adapters."""
        if self.world <= 1:
            return
        with torch.no_grad():
            local = torch.stack([torch.stack([t.double().sum(), t.double().abs().sum()]) for t in tensors]).sum(0)
        gathered = [torch.zeros_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, local)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise DiffMASError(
                f"the {self.world} processes ended with different {what}: data-parallel training "
                "went out of sync (were they started with different settings or code?)"
            )

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors across processes, in place (one all-reduce per dtype and device)."""
        if self.world <= 1:
            return
        groups: dict[tuple, list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            torch.distributed.all_reduce(flat)
            flat.div_(self.world)
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
