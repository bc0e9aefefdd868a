"""ResShift residual-shifting noise schedule and the closed-form pieces of its diffusion.

Symbols follow the paper (TAD-SR §III, itself following ResShift):

* ``z_0`` the clean latent, ``z_y`` the latent of the bicubic-upsampled LR image, ``z_t`` the noisy latent;
* ``eta_t`` the shift schedule (``eta_1`` small, ``eta_T`` close to 1), ``kappa`` the noise scale;
* ``alpha_t = eta_t - eta_{t-1}`` with ``eta_0 = 0``.

Timesteps are code indices ``t in {0, ..., T-1}``; index ``i`` is the paper's step ``i + 1``.
Every array is built in float64 and cast to the tensor's dtype only where it is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tadsr.config_checks import check_ranges
from tadsr.errors import ConfigError

EtaStartRule = Literal["resshift", "sinsr"]


@dataclass(frozen=True)
class ScheduleConfig:
    """Parameters of the exponential eta schedule (docs/implementation-notes.md §1.1).

    ``eta_start_rule`` chooses the formula for sqrt(eta_1):

    * ``"resshift"``: ``min(min_noise_level / kappa, min_noise_level)`` (ResShift HEAD since 2024-03-12; the code
      that released ``resshift_faceir_s4.pth``);
    * ``"sinsr"``: the same, further capped at ``sqrt(0.001)`` (ResShift's first commit, SinSR and TAD-SR).

    The two agree for the real-SR T=15 schedule and differ for the T=4 face schedule.
    """

    num_steps: int = 15
    kappa: float = 2.0
    power: float = 0.3
    min_noise_level: float = 0.04
    etas_end: float = 0.99
    eta_start_rule: EtaStartRule = "resshift"

    def __post_init__(self) -> None:
        check_ranges(self, "model.schedule", {"num_steps": (1, 1000), "kappa": (None, 100), "power": (None, 100)})
        if self.kappa <= 0 or self.min_noise_level <= 0 or self.power <= 0:
            raise ConfigError("kappa, power and min_noise_level must be positive")
        if not 0 < self.etas_end < 1:
            raise ConfigError(f"etas_end (sqrt(eta_T)) must lie in (0, 1), got {self.etas_end}")
        if self.eta_start_rule not in ("resshift", "sinsr"):
            raise ConfigError(f"eta_start_rule must be 'resshift' or 'sinsr', got {self.eta_start_rule!r}")


def sqrt_eta_schedule(cfg: ScheduleConfig) -> Tensor:
    """sqrt(eta_t) for t = 1..T, float64 of shape (T,) on the CPU (ResShift Eq. 10; docs/implementation-notes.md §1.1).

    sqrt(eta_t) = sqrt(eta_1) * (sqrt(eta_T) / sqrt(eta_1)) ** (((t - 1) / (T - 1)) ** p).
    """
    start = min(cfg.min_noise_level / cfg.kappa, cfg.min_noise_level)
    if cfg.eta_start_rule == "sinsr":
        start = min(start, math.sqrt(0.001))
    if cfg.num_steps == 1:
        return torch.tensor([cfg.etas_end], dtype=torch.float64, device="cpu")
    frac = torch.linspace(0, 1, cfg.num_steps, dtype=torch.float64, device="cpu") ** cfg.power  # ((t-1)/(T-1))^p
    return start * (cfg.etas_end / start) ** frac


class Schedule:
    """The schedule's derived arrays, all float64 of shape (T,).

    Attributes: ``sqrt_eta``, ``eta``, ``eta_prev`` (``[0, eta_1, ..., eta_{T-1}]``), ``alpha``,
    ``posterior_mean_coef_xt`` (eta_{t-1}/eta_t), ``posterior_mean_coef_x0`` (alpha_t/eta_t),
    ``posterior_variance`` (kappa^2 eta_{t-1} alpha_t / eta_t), ``posterior_log_variance_clipped``,
    ``input_std`` (sqrt(kappa^2 eta_t + 1)) and the deterministic-sampler coefficients ``ddim_k``, ``ddim_m``,
    ``ddim_j``.
    """

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        self.kappa = config.kappa
        self.num_steps = config.num_steps
        self.sqrt_eta = sqrt_eta_schedule(config)
        self.eta = self.sqrt_eta**2
        self.eta_prev = torch.cat([self.eta.new_zeros(1), self.eta[:-1]])
        self.alpha = self.eta - self.eta_prev
        # Eq. 2: q(z_{t-1} | z_t, z_0, y) = N(eta_{t-1}/eta_t z_t + alpha_t/eta_t z_0,
        #                                   kappa^2 eta_{t-1}/eta_t alpha_t I)
        self.posterior_mean_coef_xt = self.eta_prev / self.eta
        self.posterior_mean_coef_x0 = self.alpha / self.eta
        self.posterior_variance = self.kappa**2 * self.eta_prev / self.eta * self.alpha
        # Entry 0 of the variance is 0; its log is taken from entry 1 (ResShift's clipped log-variance).
        clipped = self.posterior_variance.clone()
        if self.num_steps > 1:
            clipped[0] = clipped[1]
        self.posterior_log_variance_clipped = torch.log(clipped)
        self.input_std = torch.sqrt(self.kappa**2 * self.eta + 1)
        self.ddim_k, self.ddim_m, self.ddim_j = deterministic_coefficients(self.eta)

    def __repr__(self) -> str:
        return f"Schedule({self.config})"


def deterministic_coefficients(eta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients (k_t, m_t, j_t) of the deterministic sampler, Eq. 3 (SinSR), each float64 of shape (T,).

    m_t = sqrt(eta_{t-1}/eta_t), j_t = eta_{t-1} - sqrt(eta_{t-1} eta_t), k_t = 1 - m_t - j_t, with eta_0 = 0.
    """
    eta_prev = torch.cat([eta.new_zeros(1), eta[:-1]])
    m = torch.sqrt(eta_prev / eta)
    j = eta_prev - torch.sqrt(eta_prev * eta)
    k = 1 - m - j
    return k, m, j


def extract(arr: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """arr[t] reshaped to (N, 1, 1, 1) for broadcasting against x of shape (N, C, H, W), in x's dtype and device."""
    out = arr.to(t.device)[t.long()].to(device=x.device, dtype=x.dtype)
    return out.reshape(-1, *([1] * (x.dim() - 1)))


def q_sample(schedule: Schedule, z_0: Tensor, z_y: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Forward marginal q(z_t | z_0, y), Eq. 1: z_t = z_0 + eta_t (z_y - z_0) + kappa sqrt(eta_t) noise.

    z_0, z_y, noise: (N, C, H, W); t: (N,) integer indices.
    """
    eta = extract(schedule.eta, t, z_0)
    sqrt_eta = extract(schedule.sqrt_eta, t, z_0)
    return z_0 + eta * (z_y - z_0) + schedule.kappa * sqrt_eta * noise


def prior_sample(schedule: Schedule, z_y: Tensor, noise: Tensor) -> Tensor:
    """Prior z_T = z_y + kappa sqrt(eta_T) noise (Eq. 1 at t = T, mean approximated by z_y). Shapes (N, C, H, W)."""
    return z_y + schedule.kappa * schedule.sqrt_eta[-1].item() * noise


def posterior_mean_variance(schedule: Schedule, z_t: Tensor, z_0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(z_{t-1} | z_t, z_0, y), Eq. 2. Returns ((N, C, H, W), (N, 1, 1, 1))."""
    coef_xt = extract(schedule.posterior_mean_coef_xt, t, z_t)
    mean = coef_xt * z_t + extract(schedule.posterior_mean_coef_x0, t, z_t) * z_0
    return mean, extract(schedule.posterior_variance, t, z_t)


def scale_input(schedule: Schedule, z_t: Tensor, t: Tensor) -> Tensor:
    """Network input normalisation z_t / sqrt(kappa^2 eta_t + 1) (ResShift ``_scale_input``;
    docs/implementation-notes.md §1.3)."""
    return z_t / extract(schedule.input_std, t, z_t)


def x0_to_eps(schedule: Schedule, z_t: Tensor, z_0: Tensor, z_y: Tensor, t: Tensor) -> Tensor:
    """eps = (z_t - (1 - eta_t) z_0 - eta_t z_y) / (kappa sqrt(eta_t)), the inverse of Eq. 1 (paper Eq. 14)."""
    eta = extract(schedule.eta, t, z_t)
    return (z_t - (1 - eta) * z_0 - eta * z_y) / (schedule.kappa * extract(schedule.sqrt_eta, t, z_t))


def eps_to_x0(schedule: Schedule, z_t: Tensor, eps: Tensor, z_y: Tensor, t: Tensor) -> Tensor:
    """z_0 = (z_t - kappa sqrt(eta_t) eps - eta_t z_y) / (1 - eta_t), the inverse of Eq. 1."""
    eta = extract(schedule.eta, t, z_t)
    return (z_t - schedule.kappa * extract(schedule.sqrt_eta, t, z_t) * eps - eta * z_y) / (1 - eta)
