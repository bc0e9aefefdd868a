"""Exponential moving average of a model's parameters (rate 0.999 in ResShift/TAD-SR)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow = rate * shadow + (1 - rate) * param`` after each step; buffers are copied
    (docs/implementation-notes.md §1.4)."""

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.rate = rate
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, param in zip(self.model.parameters(), model.parameters(), strict=True):
            shadow.lerp_(param.detach(), 1 - self.rate)
        for shadow, buf in zip(self.model.buffers(), model.buffers(), strict=True):
            shadow.copy_(buf)
