"""Vanilla distillation (paper Eq. 6): regress the one-step student onto the teacher's T-step output."""

from __future__ import annotations

from torch import Tensor


class DistillationLoss:
    """L_distill = mean over (C, H, W) of (z_stu - z_tch)^2, per sample; z_tch from the same z_T (no gradient)."""

    def __call__(self, z_student: Tensor, z_teacher: Tensor) -> Tensor:
        return (z_student - z_teacher.detach()).float().pow(2).flatten(1).mean(1)
