"""A deterministic, resumable stream of training batches.

Position p of the stream is sample ``perm_e[p mod n]`` of epoch e = p div n, where ``perm_e`` is a permutation
seeded from (seed, e). Batch k of rank r holds positions (k W + r) B ... + B - 1 (W ranks, B per rank), so a run
resumed at step k reads exactly the batches an uninterrupted run would, whatever the number of data workers:
each sample's own randomness is keyed by (seed, epoch, index) in the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from tadsr.data.datasets import EpochDataset, sample_generator


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=sample_generator(seed, 7919, epoch)).tolist()


class StreamOrder:
    """Stream position p -> (sample index perm_e[p mod n], epoch e = p div n) over ``n`` samples (module docstring).

    Keeps the permutations of the current and the previous epoch (a batch may straddle two epochs).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def __call__(self, position: int) -> tuple[int, int]:
        epoch, k = divmod(position, self.n)
        if epoch not in self._perms:  # one permutation per epoch, not per sample
            self._perms = {e: v for e, v in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = epoch_permutation(self.n, self.seed, epoch)
        return self._perms[epoch][k], epoch


class PositionDataset(Dataset):
    """Stream position -> sample of the underlying dataset (``EpochDataset.sample``)."""

    def __init__(self, base: EpochDataset, seed: int) -> None:
        self.base, self.order = base, StreamOrder(len(base), seed)

    def __len__(self) -> int:  # the stream is unbounded; DataLoader only needs a batch sampler
        return 2**62

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.base.sample(*self.order(position))


class StreamBatchSampler(Sampler[list[int]]):
    """Batches of stream positions for one rank, starting at ``start_step`` (0-based)."""

    def __init__(self, batch_size: int, rank: int = 0, world_size: int = 1, start_step: int = 0) -> None:
        self.batch_size, self.rank, self.world_size, self.start_step = batch_size, rank, world_size, start_step

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))
            step += 1


def tensor_batch_stream(tensors: dict[str, Tensor], batch_size: int, seed: int, rank: int, world_size: int,
                        start_step: int) -> Iterator[dict[str, Tensor]]:
    """The same stream over fixed tensors (N, ...) held in memory, e.g. the distillation's teacher cache."""
    order = StreamOrder(len(next(iter(tensors.values()))), seed)
    for positions in StreamBatchSampler(batch_size, rank, world_size, start_step):
        idx = [order(p)[0] for p in positions]
        yield {key: value[idx] for key, value in tensors.items()}


def batch_stream(dataset: EpochDataset, batch_size: int, seed: int, rank: int,
                 world_size: int, start_step: int, workers: int) -> Iterator[dict[str, Any]]:
    loader = DataLoader(PositionDataset(dataset, seed), num_workers=workers,
                        batch_sampler=StreamBatchSampler(batch_size, rank, world_size, start_step),
                        persistent_workers=False)
    return iter(loader)
