"""Hinge adversarial losses (paper Eq. 11-12) on the discriminator's logits (B, L): every logit of every head of a
sample (``tadsr.nets.discriminator.LatentDiscriminator``).

``per_logit`` (the authors' code, docs/implementation-notes.md §4.5): the hinge on each logit, then the mean over the
sample's logits; otherwise the hinge on the sample's mean logit (tadsr 0.1's, kept for comparison). The generator's
loss is linear in D, so both give -mean.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def discriminator_hinge_loss(real: Tensor, fake: Tensor, per_logit: bool = True) -> Tensor:
    """Eq. 12: ReLU(1 - D(real)) + ReLU(1 + D(fake)), per sample (B,), from logits (B, L)."""
    if per_logit:
        return F.relu(1 - real).mean(dim=1) + F.relu(1 + fake).mean(dim=1)
    return F.relu(1 - real.mean(dim=1)) + F.relu(1 + fake.mean(dim=1))


def generator_adversarial_loss(fake: Tensor) -> Tensor:
    """Eq. 11: -D(fake), per sample (B,), from logits (B, L) (the trainer weights it by lambda_2)."""
    return -fake.mean(dim=1)
