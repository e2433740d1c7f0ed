"""Sharding work across torchrun processes (gloo on CPU, nccl on GPU) and meeting again."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the torchrun processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This process's device: its own GPU under torchrun on GPUs, else the GPU or the CPU."""
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_rank) if self.size > 1 else torch.device("cuda")

    def shard(self, items: Sequence[T]) -> list[T]:
        """Every ``size``-th item starting at ``rank``."""
        return list(items[self.rank :: self.size])

    def broadcast(self, value: T) -> T:
        """Rank 0's value, on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init_world() -> World:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join its process group (gloo on CPU, nccl on GPU,
    each process on its local GPU). Otherwise a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    world = World(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
    return world
