"""Hinge adversarial losses (paper Eq. 11-12), on the discriminator's per-sample mean logit (B,)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def discriminator_hinge_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Eq. 12: ReLU(1 - D(real)) + ReLU(1 + D(fake)), per sample."""
    return F.relu(1 - real) + F.relu(1 + fake)


def generator_adversarial_loss(fake: Tensor) -> Tensor:
    """Eq. 11: -D(fake), per sample (the trainer weights it by lambda_2)."""
    return -fake
