"""Multi-GPU / multi-node training through ``torchrun`` (PyTorch DDP).

``torchrun --nproc_per_node=4 -m ktstrain train ...`` sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; a plain ``python -m ktstrain train`` is
the same code with a world of one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from KidneyTumorSegLib.engine.device import parse_device

DDP_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_name: str) -> World:
    """Join the process group when launched by torchrun; pick this rank's GPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    # read as everywhere else (case, spaces, a bad name refused); the GPU is this rank's, whatever index was named
    use_cuda = torch.cuda.is_available() and parse_device(device_name)[0] != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        # rank 0 validates on whole cases while the others wait in the next step's all-reduce: allow
        # longer than NCCL's 10-minute default before a waiting rank is declared hung
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=DDP_TIMEOUT)
    return World(rank, local, size)


def all_mean(value: float, world: World, device: torch.device) -> float:
    """Mean of a scalar over ranks (the loss that is logged)."""
    if not world.distributed:
        return float(value)
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t)
    return float(t.item()) / world.size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
