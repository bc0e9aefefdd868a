"""The teacher's diffusion process, as TAD-SR's losses see it: one interface, one implementation per process.

Algorithm 1 needs four things from a teacher beyond its sampler: the forward process at t with a given noise (Eq. 1
for ResShift), its x0 prediction x0_hat(z_t, t, y), the noise an x0 implies (eps, to form HSD's direction, Eq. 7-8),
and its encoder's features at (z_t, t) for the time-aware discriminator (Eq. 9-10). ``TeacherProcess`` names them;
HSD/SDS (``tadsr.losses.score``) and the discriminator's features are written once against it.

* ``ResShiftProcess`` — the residual-shifting process (paper Eq. 1, 14) and a ``Denoiser``; its conditioning is
  ``ResShiftCondition(z_y, lq)``;
* ``tadsr.sd.process.VPProcess`` — the variance-preserving latent process of SD-based teachers (Appendix B).

``cond`` is each process's own conditioning, built once per batch and passed through unchanged. Tensors are
(N, C, H, W) latents and (N,) integer timesteps of the process (``num_timesteps`` of them).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from torch import Tensor

from tadsr.diffusion.denoiser import Denoiser
from tadsr.diffusion.schedule import Schedule, extract, q_sample, x0_to_eps


class TeacherProcess(Protocol):
    """What TAD-SR's losses and discriminator need from a teacher (module docstring)."""

    @property
    def num_timesteps(self) -> int: ...

    def q_sample(self, z_0: Tensor, t: Tensor, noise: Tensor, cond: Any) -> Tensor:
        """z_t from the clean latent z_0 and ``noise`` (the forward process)."""
        ...

    def x0_hat(self, z_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        """The teacher's prediction of the clean latent at (z_t, t)."""
        ...

    def to_eps(self, z_t: Tensor, x0: Tensor, t: Tensor, cond: Any) -> Tensor:
        """The noise that maps ``x0`` to ``z_t`` at t (the forward process inverted for its noise)."""
        ...

    def encoder_features(self, z_t: Tensor, t: Tensor, cond: Any) -> list[Tensor]:
        """The teacher network's encoder activations at (z_t, t): the time-aware discriminator's input."""
        ...


class ResShiftCondition(NamedTuple):
    """ResShift's conditioning: the LR image's latent z_y (N, C, H, W) and the LR image lq (N, 3, h, w)."""

    z_y: Tensor
    lq: Tensor


class ResShiftProcess:
    """``TeacherProcess`` for ResShift: Eq. 1 forward, x0_hat from the preconditioned ``denoiser``, Eq. 14's eps.

    ``double_scaling``: give the teacher's network x / (kappa^2 eta + 1) instead of x / sqrt(kappa^2 eta + 1) in
    ``x0_hat`` (the authors' HSD code scales twice, docs/implementation-notes.md §4.9 #2; off by default)."""

    def __init__(self, schedule: Schedule, denoiser: Denoiser, double_scaling: bool = False) -> None:
        self.schedule, self.denoiser, self.double_scaling = schedule, denoiser, double_scaling

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_steps

    def q_sample(self, z_0: Tensor, t: Tensor, noise: Tensor, cond: ResShiftCondition) -> Tensor:
        return q_sample(self.schedule, z_0, cond.z_y, t, noise)

    def x0_hat(self, z_t: Tensor, t: Tensor, cond: ResShiftCondition) -> Tensor:
        z_in = z_t / extract(self.schedule.input_std, t, z_t) if self.double_scaling else z_t
        return self.denoiser(z_in, t, cond.lq, cond.z_y)

    def to_eps(self, z_t: Tensor, x0: Tensor, t: Tensor, cond: ResShiftCondition) -> Tensor:
        return x0_to_eps(self.schedule, z_t, x0, cond.z_y, t)

    def encoder_features(self, z_t: Tensor, t: Tensor, cond: ResShiftCondition) -> list[Tensor]:
        return self.denoiser.encoder_features(z_t, t, cond.lq)  # type: ignore[attr-defined]
