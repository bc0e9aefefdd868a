"""torchrun support for inference and training alike: the same script runs as one process, or under torchrun (gloo
on CPU, nccl on CUDA); ``assign`` splits a job list over the ranks (sharded ``upscale`` and ``evaluate``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def rank_device(requested: torch.device, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank`` on its machine: the GPU ``local_rank`` (modulo the visible
    GPUs) when CUDA without an index was asked for, else what was asked (``--device cpu`` stays on the CPU)."""
    if requested.type == "cuda" and requested.index is None:
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return requested


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(requested: torch.device, timeout_minutes: float = 30.0) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun: (rank, world_size, this process's device); (0, 1,
    ``requested``) otherwise. The CUDA device is set before the group exists (so that NCCL's collectives use this
    rank's GPU), and a rank that waits longer than ``timeout_minutes`` for the others ends the job."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, requested
    device = rank_device(requested, int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"timeout": timedelta(minutes=timeout_minutes)}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            kwargs["device_id"] = device
        dist.init_process_group(backend(device), **kwargs)
    return dist.get_rank(), dist.get_world_size(), device


def assign(keys: Sequence[str], world: int, sizes: Sequence[float] | None = None) -> list[int]:
    """The rank of each item when items are split across ``world`` processes, the same on every rank and every
    rerun of the same input. Items with equal keys go to one rank. Distinct keys are taken in sorted order; with
    ``sizes`` (e.g. pixel counts; an item of several keys counts their sum) each goes, largest first, to the rank
    with the least work so far (ties: the lower rank), else round-robin. Every rank gets work when there are at
    least ``world`` distinct keys."""
    if world < 1:
        raise ValueError(f"world size {world}: need >= 1")
    distinct = sorted(set(keys))
    if sizes is None:
        rank_of = {key: i % world for i, key in enumerate(distinct)}
    else:
        total = dict.fromkeys(distinct, 0.0)
        for key, size in zip(keys, sizes, strict=True):
            total[key] += float(size)
        load, rank_of = [0.0] * world, {}
        for key in sorted(distinct, key=lambda k: -total[k]):  # a stable sort: equal sizes keep the key order
            rank_of[key] = min(range(world), key=lambda r: (load[r], r))
            load[rank_of[key]] += total[key]
    return [rank_of[key] for key in keys]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any (``flag`` itself without torchrun)."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=device if backend(device) == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks (the values themselves without torchrun); every rank must call it."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                          device=device if backend(device) == "nccl" else "cpu")
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / dist.get_world_size()).tolist(), strict=True))


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank (a list of one without torchrun)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None, src: int,
                      device: torch.device) -> dict[str, torch.Tensor]:
    """Rank ``src``'s dict of CPU tensors on every rank, on the CPU (``tensors`` itself without torchrun; other
    ranks pass None). Their names, shapes and dtypes go first as an object, then each tensor through ``device``
    (the process group's: a GPU under NCCL)."""
    if not is_distributed():
        assert tensors is not None
        return tensors
    meta = [None if tensors is None else [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]]
    dist.broadcast_object_list(meta, src=src)
    out = {}
    for key, shape, dtype in meta[0]:
        # contiguous: the receivers' buffers are, and the bytes go in memory order (a VAE's output may be strided)
        buffer = (tensors[key].to(device).contiguous() if tensors is not None
                  else torch.empty(shape, dtype=dtype, device=device))
        dist.broadcast(buffer, src=src)
        out[key] = buffer.cpu()
    return out

