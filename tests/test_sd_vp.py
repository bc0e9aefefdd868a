"""The latent VP (DDPM) process of SD-based teachers: forward and conversions against closed forms."""

from __future__ import annotations

import pytest
import torch

from tadsr.diffusion.vp import hsd_factor, to_eps, to_x0, vp_forward

GEN = torch.Generator().manual_seed(0)
ALPHAS = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)  # DDPM's linear betas
Z0, EPS = torch.randn(3, 4, 8, 8, generator=GEN, dtype=torch.float64), torch.randn(3, 4, 8, 8, generator=GEN,
                                                                                  dtype=torch.float64)
T = torch.tensor([0, 499, 999])


def test_the_forward_process_is_ddpms_marginal() -> None:
    z_t = vp_forward(ALPHAS, Z0, T, EPS)
    for i, t in enumerate(T.tolist()):
        a = ALPHAS[t]
        torch.testing.assert_close(z_t[i], a.sqrt() * Z0[i] + (1 - a).sqrt() * EPS[i])
    # variance preserving: unit-variance data and noise give a unit-variance z_t at every t
    big = torch.randn(2000, 1, 1, 1, generator=GEN, dtype=torch.float64)
    noise = torch.randn(2000, 1, 1, 1, generator=GEN, dtype=torch.float64)
    assert abs(float(vp_forward(ALPHAS, big, torch.full((2000,), 600), noise).var()) - 1) < 0.1


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_gives_back_the_clean_latent(kind: str) -> None:
    """The exact eps, v and x0 of a forward draw convert to x0 = z_0 and, through to_eps, to the drawn noise."""
    z_t = vp_forward(ALPHAS, Z0, T, EPS)
    a = ALPHAS[T].view(-1, 1, 1, 1)
    exact = {"epsilon": EPS, "v_prediction": a.sqrt() * EPS - (1 - a).sqrt() * Z0, "sample": Z0}[kind]
    x0 = to_x0(ALPHAS, z_t, T, exact, kind)
    torch.testing.assert_close(x0, Z0)
    torch.testing.assert_close(to_eps(ALPHAS, z_t, T, x0), EPS)


def test_an_unknown_prediction_type_is_refused() -> None:
    with pytest.raises(ValueError, match="prediction type 'flow'"):
        to_x0(ALPHAS, Z0, T, Z0, "flow")  # type: ignore[arg-type]


def test_hsd_on_the_vp_process_is_the_residual_times_its_factor() -> None:
    """With shared noise, eps(z_t^s) - eps(z_t^tch) = sqrt(a)/sqrt(1-a) [(z_s - z_tch) - (x0^s - x0^tch)] for any
    x0 predictions (docs/implementation-notes.md, HSD for a VP teacher)."""
    z_s, z_tch = Z0, Z0 + 0.1 * EPS
    x0_s, x0_tch = torch.randn_like(Z0), torch.randn_like(Z0)
    noise = torch.randn(Z0.shape, generator=GEN, dtype=torch.float64)
    g = to_eps(ALPHAS, vp_forward(ALPHAS, z_s, T, noise), T, x0_s) - to_eps(ALPHAS, vp_forward(ALPHAS, z_tch, T,
                                                                                               noise), T, x0_tch)
    factor = hsd_factor(ALPHAS, T).double().view(-1, 1, 1, 1)
    torch.testing.assert_close(g, factor * ((z_s - z_tch) - (x0_s - x0_tch)), rtol=1e-5, atol=1e-5)
    assert factor[0] > factor[1] > factor[2]  # small t weighs more, as (1 - eta)/(kappa sqrt(eta)) does
