"""Samplers of the ResShift reverse process: stochastic (Eq. 2), deterministic (Eq. 3) and one-step.

All samplers are pure functions of ``(denoiser, schedule, z_y, lq, noise)``: ``denoiser(z_t, t, lq, z_y)`` returns
x0-hat from the unscaled latent (``tadsr.diffusion.denoiser.ResShiftDenoiser`` around a network). Randomness enters
only through ``noise`` (the prior's standard normal draw) and ``generator`` (the per-step noise of the stochastic
sampler).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from tadsr.diffusion.denoiser import Denoiser
from tadsr.diffusion.schedule import Schedule, extract, posterior_mean_variance, prior_sample

SamplerName = Literal["deterministic", "stochastic"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)


def deterministic_step(schedule: Schedule, z_t: Tensor, x0_hat: Tensor, z_y: Tensor, t: Tensor) -> Tensor:
    """One step of Eq. 3: z_{t-1} = k_t x0_hat + m_t z_t + j_t z_y (SinSR's zero-variance sampler)."""
    k = extract(schedule.ddim_k, t, z_t)
    m = extract(schedule.ddim_m, t, z_t)
    j = extract(schedule.ddim_j, t, z_t)
    return k * x0_hat + m * z_t + j * z_y


def stochastic_step(
    schedule: Schedule, z_t: Tensor, x0_hat: Tensor, t: Tensor, step_noise: Tensor
) -> Tensor:
    """One ancestral step of Eq. 2: z_{t-1} = mean + sqrt(var) n, with no noise at t = 0 (ResShift ``p_sample``)."""
    mean, var = posterior_mean_variance(schedule, z_t, x0_hat, t)
    nonzero = (t != 0).to(z_t.dtype).reshape(-1, *([1] * (z_t.dim() - 1)))
    return mean + nonzero * torch.sqrt(var) * step_noise


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal of x's shape, drawn on the generator's device (so the bits do not depend on x's device)."""
    device = x.device if generator is None else generator.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def sample(
    denoiser: Denoiser,
    schedule: Schedule,
    z_y: Tensor,
    lq: Tensor,
    noise: Tensor | None = None,
    sampler: SamplerName = "deterministic",
    one_step: bool = False,
    generator: torch.Generator | None = None,
    step_noise: Tensor | None = None,
) -> Tensor:
    """Run the reverse process from z_T = z_y + kappa sqrt(eta_T) noise and return the final latent.

    Args:
        denoiser: ``denoiser(z_t, t, lq, z_y) -> x0_hat`` (a ``ResShiftDenoiser``).
        schedule: the eta schedule (T steps).
        z_y: (N, C, H, W) latent of the bicubic-upsampled LR image.
        lq: (N, 3, h, w) LR image in [-1, 1], the network's condition.
        noise: (N, C, H, W) standard normal prior draw; drawn from ``generator`` when None.
        sampler: ``"deterministic"`` (Eq. 3, SinSR coefficients; the distillation target) or ``"stochastic"``
            (Eq. 2, ResShift's ancestral sampler; per-step noise from ``generator``).
        one_step: return x0_hat of the single call at t = T-1 (the TAD-SR student's inference).
        generator: source of every random draw the sampler makes.
        step_noise: (T-1, N, C, H, W) standard normal draws of the stochastic sampler, used at t = T-1 .. 1 in that
            order (a tiled image slices one draw for the whole picture); drawn from ``generator`` when None.

    Returns:
        (N, C, H, W) z_0 estimate, not clipped (latent space).
    """
    if sampler not in ("deterministic", "stochastic"):
        raise ValueError(f"sampler must be 'deterministic' or 'stochastic', got {sampler!r}")
    if noise is None:
        noise = _randn_like(z_y, generator)
    if noise.shape != z_y.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from z_y shape {tuple(z_y.shape)}")
    steps = schedule.num_steps
    if step_noise is not None and tuple(step_noise.shape) != (steps - 1, *z_y.shape):
        raise ValueError(f"step_noise shape {tuple(step_noise.shape)}: need {(steps - 1, *z_y.shape)}")
    z = prior_sample(schedule, z_y, noise)
    n = z_y.shape[0]
    for step in reversed(range(schedule.num_steps)):
        t = torch.full((n,), step, device=z_y.device, dtype=torch.int64)
        x0_hat = denoiser(z, t, lq, z_y)
        if one_step:
            return x0_hat
        if sampler == "deterministic":
            z = deterministic_step(schedule, z, x0_hat, z_y, t)
        elif step > 0:
            n_t = _randn_like(z, generator) if step_noise is None else step_noise[steps - 1 - step].to(z)
            z = stochastic_step(schedule, z, x0_hat, t, n_t)
        else:
            z = x0_hat  # posterior at t = 0 has mean x0_hat and zero variance
    return z
