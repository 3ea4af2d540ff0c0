"""Process-group set-up that runs the same on one process or under `torchrun` (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None, timeout: timedelta | None = None) -> DistributedContext:
    """Join the torchrun process group when RANK/WORLD_SIZE are set, else run alone; `timeout`: how long a
    collective may wait for the slowest rank (None: torch's default)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if world_size > 1:
        if target.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            target = torch.device("cuda", local_rank)
            torch.cuda.set_device(target)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo", timeout=timeout)
    return DistributedContext(rank=rank, world_size=world_size, device=target)


def teardown_distributed(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    if ctx.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return value
