"""Score distillation on the student's output: HSD (paper Eq. 7-8) and SDS (Eq. 5).

Both perturb the student output z_stu to a small timestep t' with the forward process (Eq. 1), ask the frozen
teacher for its x0 prediction there, convert it to a noise prediction eps = (z_t - (1 - eta) x0 - eta z_y) /
(kappa sqrt(eta)), and form a gradient direction g with a stop-gradient (docs/implementation-notes.md §4.4):

* HSD: g = eps_T(z_t'^stu) - eps_T(z_t'^tch), with the *same* noise added to the teacher's T-step output z_tch,
  so g = 0 when the student equals the teacher (no bias);
* SDS: g = eps_T(z_t'^stu) - n, n the added noise.

The loss is mean over (C, H, W) of (g * z_stu), whose gradient w.r.t. z_stu is g / (C H W), the U-Net Jacobian
omitted as in the paper. No extra time weighting (omega = 1 / CS comes from the mean), as in the authors' code.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tadsr.diffusion.denoiser import Denoiser
from tadsr.diffusion.schedule import Schedule, extract, q_sample, x0_to_eps


class ScoreDistillationLoss:
    """HSD (``kind="hsd"``) or SDS (``kind="sds"``) per-sample loss.

    Args:
        schedule: the teacher's schedule.
        kind: "hsd" or "sds".
        t_range: t' is drawn uniformly from code indices [low, high) per sample: (0, 3) = paper steps 1-3.
        noise: "gaussian" (the paper) or "uniform" (the authors' code uses ``rand_like``, docs/implementation-notes.md
        §4.9 #1).
        double_scaling: feed the teacher's network x / (kappa^2 eta + 1) instead of x / sqrt(kappa^2 eta + 1) (the
            authors' code scales twice, §4.9 #2): the denoiser, which scales once, gets z_t pre-scaled; off by
            default.
    """

    def __init__(self, schedule: Schedule, kind: Literal["hsd", "sds"] = "hsd", t_range: tuple[int, int] = (0, 3),
                 noise: Literal["gaussian", "uniform"] = "gaussian", double_scaling: bool = False) -> None:
        if kind not in ("hsd", "sds"):
            raise ValueError(f"kind must be 'hsd' or 'sds', got {kind!r}")
        if not 0 <= t_range[0] < t_range[1] <= schedule.num_steps:
            raise ValueError(f"t_range {t_range} must lie within [0, {schedule.num_steps}]")
        self.schedule, self.kind, self.t_range = schedule, kind, t_range
        self.noise, self.double_scaling = noise, double_scaling

    def direction(self, teacher: Denoiser, z_student: Tensor, z_teacher: Tensor | None, z_y: Tensor, lq: Tensor,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(g, t') with g (N, C, H, W) the stop-gradient direction; no graph is built."""
        s = self.schedule
        n = z_student.shape[0]
        device = z_student.device
        gen_device = generator.device if generator is not None else device
        t = torch.randint(*self.t_range, (n,), generator=generator, device=gen_device).to(device)
        draw = torch.rand if self.noise == "uniform" else torch.randn
        noise = draw(z_student.shape, generator=generator, device=gen_device, dtype=torch.float32).to(z_student)
        with torch.no_grad():
            def eps_of(z0: Tensor) -> Tensor:
                z_t = q_sample(s, z0, z_y, t, noise)
                z_in = z_t / extract(s.input_std, t, z_t) if self.double_scaling else z_t
                return x0_to_eps(s, z_t, teacher(z_in, t, lq, z_y), z_y, t)

            eps_student = eps_of(z_student.detach())
            if self.kind == "hsd":
                if z_teacher is None:
                    raise ValueError("HSD needs the teacher's output z_teacher")
                g = eps_student - eps_of(z_teacher)
            else:
                g = eps_student - noise
        return g, t  # not nan_to_num: a non-finite teacher output must reach the trainer's finite check

    def __call__(self, teacher: Denoiser, z_student: Tensor, z_teacher: Tensor | None, z_y: Tensor, lq: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
        g, _ = self.direction(teacher, z_student, z_teacher, z_y, lq, generator)
        return (g * z_student).float().flatten(1).mean(1)
