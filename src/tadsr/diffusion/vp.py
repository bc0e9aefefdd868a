"""The latent variance-preserving (DDPM) process of SD-based models, as pure functions (paper Appendix B).

Notation: alpha_bar_t (``alphas_cumprod[t]``, a scheduler's table), z_0 the clean latent, eps a standard normal draw.

* forward (DDPM, Ho et al. 2020, Eq. 4):    z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps
* from an eps-prediction:                  x0_hat = (z_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)
* from a v-prediction (Salimans & Ho 2022, v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) z_0):
                                           x0_hat = sqrt(alpha_bar_t) z_t - sqrt(1 - alpha_bar_t) v_hat
                                           eps_hat = sqrt(1 - alpha_bar_t) z_t + sqrt(alpha_bar_t) v_hat
* eps from x0 (the inverse of the first):  eps_hat = (z_t - sqrt(alpha_bar_t) x0_hat) / sqrt(1 - alpha_bar_t)

HSD's weight for this process (docs/implementation-notes.md, "HSD for a VP teacher"): with the same eps added to the
student's output and to the teacher's, g = eps_hat(z_t^stu) - eps_hat(z_t^tch) = sqrt(alpha_bar)/sqrt(1 - alpha_bar)
[(z_stu - z_tch) - (x0_hat^stu - x0_hat^tch)], the VP counterpart of paper Eq. 16, whose factor for ResShift is
(1 - eta)/(kappa sqrt(eta)); ``hsd_factor`` returns it.

Tensors are (N, C, H, W); ``t`` is (N,) integer timesteps indexing ``alphas_cumprod`` (T,).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Prediction = Literal["epsilon", "v_prediction", "sample"]


def _coefficients(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) shaped (N, 1, 1, 1) in ``like``'s dtype and device."""
    a = alphas_cumprod.to(like.device, torch.float64)[t.to(like.device).long()]
    shape = (-1, *([1] * (like.dim() - 1)))
    return a.sqrt().to(like.dtype).view(shape), (1 - a).sqrt().to(like.dtype).view(shape)


def vp_forward(alphas_cumprod: Tensor, z_0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) noise (DDPM's q(z_t | z_0))."""
    s, r = _coefficients(alphas_cumprod, t, z_0)
    return s * z_0 + r * noise


def to_x0(alphas_cumprod: Tensor, z_t: Tensor, t: Tensor, prediction: Tensor, kind: Prediction) -> Tensor:
    """x0_hat from a network's ``prediction`` of ``kind`` (eps, v or the sample itself) at (z_t, t)."""
    s, r = _coefficients(alphas_cumprod, t, z_t)
    if kind == "epsilon":
        return (z_t - r * prediction) / s
    if kind == "v_prediction":
        return s * z_t - r * prediction
    if kind == "sample":
        return prediction
    raise ValueError(f"prediction type {kind!r}: choose epsilon, v_prediction or sample")


def to_eps(alphas_cumprod: Tensor, z_t: Tensor, t: Tensor, x0_hat: Tensor) -> Tensor:
    """eps_hat = (z_t - sqrt(alpha_bar_t) x0_hat) / sqrt(1 - alpha_bar_t): the noise an x0_hat implies."""
    s, r = _coefficients(alphas_cumprod, t, z_t)
    return (z_t - s * x0_hat) / r


def hsd_factor(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t), (N,): HSD's g per unit of latent residual (module docstring)."""
    a = alphas_cumprod.to(torch.float64)[t.long().cpu()]
    return (a.sqrt() / (1 - a).sqrt()).float()
