"""torchrun support: the same script runs as one process, or under torchrun (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init() -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns (rank, world_size), (0, 1) otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank (a list of one without torchrun)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
