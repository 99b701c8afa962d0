"""Data-parallel training across processes (``torchrun`` or ``accelerate launch --multi_gpu``):
each process's rank, gradient averaging and the checks that keep the processes identical."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from diffmas.errors import DiffMASError

logger = logging.getLogger(__name__)


def one_process_of_several() -> bool:
    """Whether ``accelerate launch`` asked for several processes and started one: it then sets
    the rendezvous address for them but no WORLD_SIZE (its simple launcher, without --multi_gpu)."""
    launched = "ACCELERATE_MIXED_PRECISION" in os.environ
    return launched and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ


@dataclass
class Distributed:
    """This process's place among the data-parallel processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            if one_process_of_several():
                logger.warning(
                    "accelerate launch started 1 process although more were asked for: it starts several "
                    "only with --multi_gpu (on CPU too: `accelerate launch --multi_gpu --num_processes N`) "
                    "or use `torchrun --nproc_per_node N -m diffmas train ...`; training on 1 process"
                )
            logger.info("training on 1 process")
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        out = cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        if out.main:
            logger.warning("training on %d processes (data parallel, %s)", out.world, dist.get_backend())
        return out

    @property
    def main(self) -> bool:
        return self.rank == 0

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
