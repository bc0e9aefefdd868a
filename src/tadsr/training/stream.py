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
from torch.utils.data import DataLoader, Dataset, Sampler

from tadsr.data.datasets import EpochDataset, sample_generator


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=sample_generator(seed, 7919, epoch)).tolist()


class PositionDataset(Dataset):
    """Stream position -> sample of the underlying dataset (``EpochDataset.sample``)."""

    def __init__(self, base: EpochDataset, seed: int) -> None:
        self.base, self.seed = base, seed
        self._perms: dict[int, list[int]] = {}

    def __len__(self) -> int:  # the stream is unbounded; DataLoader only needs a batch sampler
        return 2**62

    def __getitem__(self, position: int) -> dict[str, Any]:
        n = len(self.base)
        epoch, k = divmod(position, n)
        if epoch not in self._perms:
            self._perms = {epoch: epoch_permutation(n, self.seed, epoch)}
        return self.base.sample(self._perms[epoch][k], epoch)


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


def batch_stream(dataset: EpochDataset, batch_size: int, seed: int, rank: int,
                 world_size: int, start_step: int, workers: int) -> Iterator[dict[str, Any]]:
    loader = DataLoader(PositionDataset(dataset, seed), num_workers=workers,
                        batch_sampler=StreamBatchSampler(batch_size, rank, world_size, start_step),
                        persistent_workers=False)
    return iter(loader)
