"""The diffusion maths. ResShift: the eta schedule and its closed forms (``schedule``), the preconditioned denoiser
around a network (``denoiser``) and the samplers (``samplers``); the VP (DDPM) latent process of SD-based teachers
(``vp``); the teacher process that TAD-SR's losses see, one implementation per process (``process``)."""

from tadsr.diffusion.denoiser import Denoiser, ResShiftDenoiser
from tadsr.diffusion.samplers import deterministic_step, sample, stochastic_step
from tadsr.diffusion.schedule import (
    Schedule,
    ScheduleConfig,
    deterministic_coefficients,
    eps_to_x0,
    posterior_mean_variance,
    prior_sample,
    q_sample,
    scale_input,
    sqrt_eta_schedule,
    x0_to_eps,
)

__all__ = [
    "Denoiser",
    "ResShiftDenoiser",
    "Schedule",
    "ScheduleConfig",
    "deterministic_coefficients",
    "deterministic_step",
    "eps_to_x0",
    "posterior_mean_variance",
    "prior_sample",
    "q_sample",
    "sample",
    "scale_input",
    "sqrt_eta_schedule",
    "stochastic_step",
    "x0_to_eps",
]
