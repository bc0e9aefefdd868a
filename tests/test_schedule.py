"""Schedule values against docs/implementation-notes.md §1.1/§2.1, and the closed forms of Eq. 1-3."""

from __future__ import annotations

import pytest
import torch

from tadsr.diffusion import schedule as S
from tadsr.presets import build_schedule

# docs/implementation-notes.md §1.1, T=15 table (4 decimals as printed there).
SQRT_ETA_15 = [0.0200, 0.1172, 0.1763, 0.2336, 0.2916, 0.3510, 0.4124, 0.4759, 0.5417, 0.6099, 0.6807, 0.7540,
               0.8300, 0.9086, 0.9900]
ETA_15 = [0.0004, 0.01373, 0.03108, 0.05458, 0.08502, 0.1232, 0.1700, 0.2264, 0.2934, 0.3720, 0.4633, 0.5685,
          0.6888, 0.8256, 0.9801]
INPUT_STD_15 = [1.0008, 1.0271, 1.0603, 1.1038, 1.1576, 1.2218, 1.2962, 1.3805, 1.4743, 1.5773, 1.6891, 1.8094,
                1.9379, 2.0742, 2.2182]
# docs/implementation-notes.md §2.1, deterministic-sampler coefficients for T=15.
M_15 = [0, 0.1707, 0.6646, 0.7546, 0.8013, 0.8307, 0.8512, 0.8666, 0.8785, 0.8881, 0.8961, 0.9027, 0.9085, 0.9134,
        0.9178]
K_15 = [1, 0.8312, 0.3424, 0.2555, 0.2123, 0.1867, 0.1703, 0.1596, 0.1528, 0.1488, 0.1471, 0.1472, 0.1488, 0.1518,
        0.1562]
J_15 = [0, -0.0019, -0.0069, -0.0101, -0.0135, -0.0173, -0.0215, -0.0262, -0.0313, -0.0370, -0.0431, -0.0499,
        -0.0573, -0.0653, -0.0740]


def _close(actual: torch.Tensor, expected: list[float], atol: float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def test_realsr_schedule_matches_reference_table() -> None:
    s = build_schedule("realsr-x4-v1")
    assert s.sqrt_eta.dtype == torch.float64 and s.eta.dtype == torch.float64 and s.sqrt_eta.shape == (15,)
    _close(s.sqrt_eta, SQRT_ETA_15, 5e-5)
    _close(s.eta, ETA_15, 5e-5)
    _close(s.input_std, INPUT_STD_15, 5e-5)
    _close(s.kappa * s.sqrt_eta, [0.040, 0.234, 0.353, 0.467, 0.583, 0.702, 0.825, 0.952, 1.083, 1.220, 1.361, 1.508,
                                  1.660, 1.817, 1.980], 5e-4)


def test_realsr_schedule_is_the_same_under_both_eta_start_rules() -> None:
    cfg = S.ScheduleConfig(num_steps=15, min_noise_level=0.04)
    other = S.ScheduleConfig(num_steps=15, min_noise_level=0.04, eta_start_rule="sinsr")
    assert torch.equal(S.sqrt_eta_schedule(cfg), S.sqrt_eta_schedule(other))


def test_face_schedules_differ_by_the_eta_start_rule() -> None:
    _close(build_schedule("faceir").sqrt_eta, [0.1, 0.520096, 0.761382, 0.99], 5e-7)
    _close(build_schedule("faceir").eta, [0.01, 0.2705, 0.5797, 0.9801], 5e-5)
    _close(build_schedule("faceir-tadsr").sqrt_eta, [0.031623, 0.37644, 0.667323, 0.99], 5e-7)
    _close(build_schedule("faceir-tadsr").eta, [0.001, 0.1417, 0.4453, 0.9801], 5e-5)


def test_deterministic_coefficients_match_reference_and_sum_to_one() -> None:
    s = build_schedule("realsr-x4-v1")
    _close(s.ddim_m, M_15, 5e-5)
    _close(s.ddim_k, K_15, 5e-5)
    _close(s.ddim_j, J_15, 5e-5)
    torch.testing.assert_close(s.ddim_k + s.ddim_m + s.ddim_j, torch.ones(15, dtype=torch.float64))


def test_posterior_is_the_bayes_posterior_of_the_forward_chain() -> None:
    """Eq. 2 from Gaussian conjugacy: prior z_{t-1} ~ N(z0 + eta_{t-1} e, k^2 eta_{t-1}),
    transition z_t | z_{t-1} ~ N(z_{t-1} + alpha_t e, k^2 alpha_t), e = y - z0."""
    s = build_schedule("realsr-x4-v1")
    gen = torch.Generator().manual_seed(1)
    z0, y, zt = (torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    for step in range(1, 15):
        k2 = s.kappa**2
        ep, a = s.eta_prev[step].item(), s.alpha[step].item()
        var = 1 / (1 / (k2 * ep) + 1 / (k2 * a))
        mean = var * ((z0 + ep * (y - z0)) / (k2 * ep) + (zt - a * (y - z0)) / (k2 * a))
        t = torch.full((4,), step)
        got_mean, got_var = S.posterior_mean_variance(s, zt, z0, t)
        torch.testing.assert_close(got_mean, mean)
        torch.testing.assert_close(got_var.flatten(), torch.full((4,), var, dtype=torch.float64))
    assert s.posterior_variance[0] == 0
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


def test_deterministic_step_is_ddim_with_zero_variance() -> None:
    """x_{t-1} = x0 + eta_{t-1}(y - x0) + m_t (x_t - x0 - eta_t (y - x0))  (docs/implementation-notes.md §2.1)."""
    from tadsr.diffusion.samplers import deterministic_step

    s = build_schedule("realsr-x4-v1")
    gen = torch.Generator().manual_seed(2)
    x0, y, xt = (torch.randn(3, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    for step in range(15):
        t = torch.full((3,), step)
        e, ep, m = s.eta[step].item(), s.eta_prev[step].item(), s.ddim_m[step].item()
        expected = x0 + ep * (y - x0) + m * (xt - x0 - e * (y - x0))
        torch.testing.assert_close(deterministic_step(s, xt, x0, y, t), expected)


def test_forward_marginal_and_eps_conversions_round_trip() -> None:
    s = build_schedule("realsr-x4-v1")
    gen = torch.Generator().manual_seed(3)
    z0, zy, eps = (torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 3, 7, 11, 14])
    zt = S.q_sample(s, z0, zy, t, eps)
    eta = s.eta[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(zt, z0 + eta * (zy - z0) + 2.0 * eta.sqrt() * eps)
    torch.testing.assert_close(S.x0_to_eps(s, zt, z0, zy, t), eps)
    torch.testing.assert_close(S.eps_to_x0(s, zt, eps, zy, t), z0)
    torch.testing.assert_close(S.prior_sample(s, zy, eps), zy + 1.98 * eps)
    torch.testing.assert_close(S.scale_input(s, zt, t), zt / torch.sqrt(4 * eta + 1))


def test_extract_casts_to_the_tensor_dtype() -> None:
    s = build_schedule("realsr-x4-v1")
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float32)
    out = S.extract(s.eta, torch.tensor([0, 14]), x)
    assert out.dtype == torch.float32 and out.shape == (2, 1, 1, 1)


@pytest.mark.parametrize("kwargs", [dict(num_steps=0), dict(kappa=0.0), dict(etas_end=1.0),
                                    dict(eta_start_rule="other")])
def test_bad_schedule_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        S.ScheduleConfig(**kwargs)


def test_unknown_schedule_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="realsr-x4-v1"):
        build_schedule("nope")
