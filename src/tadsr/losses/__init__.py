"""Losses of TAD-SR distillation, each a small callable returning per-sample values (N,).

* ``DistillationLoss`` — vanilla distillation, Eq. 6;
* ``ScoreDistillationLoss`` — HSD (Eq. 7-8) and, for the ablation, SDS (Eq. 5);
* ``discriminator_hinge_loss`` / ``generator_adversarial_loss`` — Eq. 12 / Eq. 11.
"""

from tadsr.losses.adversarial import discriminator_hinge_loss, generator_adversarial_loss
from tadsr.losses.distillation import DistillationLoss
from tadsr.losses.score import ScoreDistillationLoss

__all__ = ["DistillationLoss", "ScoreDistillationLoss", "discriminator_hinge_loss", "generator_adversarial_loss"]
