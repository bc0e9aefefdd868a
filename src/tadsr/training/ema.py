"""Exponential moving average of a model's parameters (rate 0.999 in ResShift/TAD-SR), with an optional warm-up."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_rate(rate: float, warmup: float, step: int) -> float:
    """The EMA's rate after ``step`` (1-based) updates: ``rate``, or with a warm-up power ``warmup`` > 0,
    min(rate, 1 - (1 + step)^-warmup) (k-diffusion's ``EMAWarmup`` with inv_gamma 1): 0.37 at step 1 for power
    2/3, 0.95 at step 100, 0.99 at step 1000."""
    if warmup <= 0:
        return rate
    return min(rate, 1 - (1 + step) ** -warmup)


class EMA:
    """``shadow = r * shadow + (1 - r) * param`` after each step, r = ``ema_rate(rate, warmup, step)``; buffers are
    copied (docs/implementation-notes.md §1.4). The model's frozen parameters (``requires_grad`` False when the
    EMA is made: a student that trains a subset) never change, so the EMA model shares them instead of copying."""

    def __init__(self, model: nn.Module, rate: float, warmup: float = 0.0) -> None:
        self.rate, self.warmup = rate, warmup
        memo = {id(p): p for p in model.parameters() if not p.requires_grad}  # deepcopy keeps these as they are
        self.model = copy.deepcopy(model, memo).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After the optimiser's ``step``-th step (1-based)."""
        weight = 1 - ema_rate(self.rate, self.warmup, step)
        for shadow, param in zip(self.model.parameters(), model.parameters(), strict=True):
            if shadow is not param:  # a shared frozen parameter is its own average
                shadow.lerp_(param.detach(), weight)
        for shadow, buf in zip(self.model.buffers(), model.buffers(), strict=True):
            shadow.copy_(buf)
