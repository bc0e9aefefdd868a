"""Score distillation on the student's output: HSD (paper Eq. 7-8) and SDS (Eq. 5), for any teacher process.

Both perturb the student output z_stu to a small timestep t' with the teacher's forward process
(``TeacherProcess.q_sample``: Eq. 1 for ResShift), ask the frozen teacher for its x0 prediction there, convert it to
a noise prediction (``TeacherProcess.to_eps``: Eq. 14 for ResShift) and form a gradient direction g with a
stop-gradient (docs/implementation-notes.md §4.4):

* HSD: g = eps_T(z_t'^stu) - eps_T(z_t'^tch), with the *same* noise added to the teacher's T-step output z_tch,
  so g = 0 when the student equals the teacher (no bias);
* SDS: g = eps_T(z_t'^stu) - n, n the added noise.

The loss is mean over (C, H, W) of (g * z_stu), whose gradient w.r.t. z_stu is g / (C H W), the U-Net Jacobian
omitted as in the paper. No extra time weighting (omega = 1 / CS comes from the mean), as in the authors' code.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from tadsr.diffusion.process import TeacherProcess


def draw_grid_timesteps(low: int, high: int, step: int, n: int, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> Tensor:
    """(n,) int64 timesteps uniform over {low, low + step, ...} below ``high`` (step 1: ``randint(low, high)``, the
    draw tadsr always made; TAD-SeeSR's code draws from 20, 40, ..., 880: low 20, high 881, step 20)."""
    if step == 1:
        return torch.randint(low, high, (n,), generator=generator, device=device)
    count = -(-(high - low) // step)
    return low + step * torch.randint(0, count, (n,), generator=generator, device=device)


class ScoreDistillationLoss:
    """HSD (``kind="hsd"``) or SDS (``kind="sds"``) per-sample loss.

    Args:
        process: the frozen teacher and its diffusion process (``tadsr.diffusion.process``).
        kind: "hsd" or "sds".
        t_range: t' is drawn uniformly from the process's timesteps [low, high) per sample: (0, 3) = paper steps
            1-3 of ResShift's 15.
        t_step: only every ``t_step``-th of them from low (``draw_grid_timesteps``).
        noise: "gaussian" (the paper) or "uniform" (the authors' code uses ``rand_like``, docs/implementation-notes.md
            §4.9 #1).
    """

    def __init__(self, process: TeacherProcess, kind: Literal["hsd", "sds"] = "hsd",
                 t_range: tuple[int, int] = (0, 3), noise: Literal["gaussian", "uniform"] = "gaussian",
                 t_step: int = 1) -> None:
        if kind not in ("hsd", "sds"):
            raise ValueError(f"kind must be 'hsd' or 'sds', got {kind!r}")
        if not 0 <= t_range[0] < t_range[1] <= process.num_timesteps:
            raise ValueError(f"t_range {t_range} must lie within [0, {process.num_timesteps}]")
        if t_step < 1:
            raise ValueError(f"t_step must be 1 or more, got {t_step}")
        self.process, self.kind, self.t_range, self.noise, self.t_step = process, kind, t_range, noise, t_step

    def direction(self, z_student: Tensor, z_teacher: Tensor | None, cond: Any,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(g, t') with g (N, C, H, W) the stop-gradient direction; no graph is built. ``cond``: the process's
        conditioning of this batch."""
        n = z_student.shape[0]
        device = z_student.device
        gen_device = generator.device if generator is not None else device
        t = draw_grid_timesteps(*self.t_range, self.t_step, n, generator, gen_device).to(device)
        draw = torch.rand if self.noise == "uniform" else torch.randn
        noise = draw(z_student.shape, generator=generator, device=gen_device, dtype=torch.float32).to(z_student)
        process = self.process
        with torch.no_grad():
            def eps_of(z0: Tensor) -> Tensor:
                z_t = process.q_sample(z0, t, noise, cond)
                return process.to_eps(z_t, process.x0_hat(z_t, t, cond), t, cond)

            eps_student = eps_of(z_student.detach())
            if self.kind == "hsd":
                if z_teacher is None:
                    raise ValueError("HSD needs the teacher's output z_teacher")
                g = eps_student - eps_of(z_teacher)
            else:
                g = eps_student - noise
        return g, t  # not nan_to_num: a non-finite teacher output must reach the trainer's finite check

    def __call__(self, z_student: Tensor, z_teacher: Tensor | None, cond: Any,
                 generator: torch.Generator | None = None) -> Tensor:
        g, _ = self.direction(z_student, z_teacher, cond, generator)
        return (g * z_student).float().flatten(1).mean(1)
