"""Samplers: the one-step path, the deterministic and stochastic loops, randomness through noise/generator."""

from __future__ import annotations

import pytest
import torch

from tadsr.diffusion import ResShiftDenoiser, q_sample, sample
from tadsr.diffusion.samplers import deterministic_step
from tadsr.presets import build_schedule


class RecordingNet:
    """A fixed affine 'network' that records its calls: x0_hat = a * x + b * lq + c * t (x the scaled input)."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), t.clone()))
        return 0.5 * x + 0.3 * lq + 0.01 * t.view(-1, 1, 1, 1).to(x.dtype)


def RecordingModel(schedule):  # noqa: ANN001, ANN201, N802 - the denoiser around a RecordingNet
    return ResShiftDenoiser(RecordingNet(), schedule)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))  # type: ignore


def test_one_step_is_one_call_at_t_max_on_the_scaled_prior() -> None:
    s = build_schedule("realsr-x4-v1")
    z_y, lq, noise = _inputs()
    model = RecordingModel(s)
    out = sample(model, s, z_y, lq, noise=noise, one_step=True)
    assert len(model.net.calls) == 1
    x, t = model.net.calls[0]
    assert t.tolist() == [14, 14] and t.dtype == torch.int64
    z_T = z_y + 2.0 * 0.99 * noise
    torch.testing.assert_close(x, z_T / (4 * 0.99**2 + 1) ** 0.5)
    torch.testing.assert_close(out, 0.5 * x + 0.3 * lq + 0.14)


def test_deterministic_sampler_matches_an_independent_loop_over_reference_coefficients() -> None:
    """Re-derive the T=15 loop with the m, j of docs/implementation-notes.md §2.1 written from the formulas in
    float64."""
    s = build_schedule("realsr-x4-v1")
    z_y, lq, noise = _inputs(1)
    out = sample(RecordingModel(s), s, z_y, lq, noise=noise, sampler="deterministic")
    eta = [v * v for v in s.sqrt_eta.tolist()]
    z = z_y + 2.0 * 0.99 * noise
    for step in reversed(range(15)):
        x0 = 0.5 * z / (4 * eta[step] + 1) ** 0.5 + 0.3 * lq + 0.01 * step
        prev = eta[step - 1] if step else 0.0
        m = (prev / eta[step]) ** 0.5
        j = prev - (prev * eta[step]) ** 0.5
        z = (1 - m - j) * x0 + m * z + j * z_y
    torch.testing.assert_close(out, z)


def test_deterministic_steps_keep_an_exact_denoiser_on_the_forward_marginal() -> None:
    """With x0_hat = z0 (an oracle), q_sample(z0, t, eps) steps to q_sample(z0, t-1, eps): DDIM's defining property."""
    s = build_schedule("realsr-x4-v1")
    z0, z_y, eps = _inputs(2)
    z = q_sample(s, z0, z_y, torch.full((2,), 14), eps)
    for step in reversed(range(1, 15)):
        z = deterministic_step(s, z, z0, z_y, torch.full((2,), step))
        torch.testing.assert_close(z, q_sample(s, z0, z_y, torch.full((2,), step - 1), eps))
    torch.testing.assert_close(deterministic_step(s, z, z0, z_y, torch.zeros(2, dtype=torch.long)), z0)


def test_stochastic_sampler_is_reproducible_per_generator_and_uses_its_noise() -> None:
    s = build_schedule("realsr-x4-v1")
    z_y, lq, noise = _inputs(3)

    def run(seed: int) -> torch.Tensor:
        return sample(RecordingModel(s), s, z_y, lq, noise=noise, sampler="stochastic",
                      generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5))
    assert not torch.allclose(run(5), run(6))
    det = sample(RecordingModel(s), s, z_y, lq, noise=noise, sampler="deterministic")
    assert not torch.allclose(run(5), det)


def test_stochastic_sampler_with_an_oracle_ends_at_the_oracle() -> None:
    """The posterior at t = 0 has zero variance and mean x0_hat, so the last step returns x0_hat exactly."""
    s = build_schedule("faceir")
    z0, z_y, noise = _inputs(4)
    out = sample(lambda z_t, t, lq, z_y: z0, s, z_y, z_y, noise=noise, sampler="stochastic",
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, z0)


def test_prior_noise_drawn_from_the_generator_when_not_given() -> None:
    s = build_schedule("faceir")
    z_y, lq, _ = _inputs(5)
    drawn = torch.randn(z_y.shape, generator=torch.Generator().manual_seed(9), dtype=z_y.dtype)
    a = sample(RecordingModel(s), s, z_y, lq, generator=torch.Generator().manual_seed(9))
    b = sample(RecordingModel(s), s, z_y, lq, noise=drawn)
    assert torch.equal(a, b)


def test_bad_sampler_arguments_are_rejected() -> None:
    s = build_schedule("faceir")
    z_y, lq, noise = _inputs()
    with pytest.raises(ValueError, match="sampler"):
        sample(RecordingModel(s), s, z_y, lq, noise=noise, sampler="ddpm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise shape"):
        sample(RecordingModel(s), s, z_y, lq, noise=noise[:1])


def test_the_denoiser_scales_the_input_and_adds_z_y_only_when_residual() -> None:
    """D(z_t) = c_skip z_y + f(z_t / sqrt(kappa^2 eta_t + 1)) with c_skip 0 (official) or 1 (residual)."""
    s = build_schedule("realsr-x4-v1")
    z_t, lq, z_y = _inputs(6)
    t = torch.tensor([0, 14])
    eta = s.eta[t].view(-1, 1, 1, 1)
    plain = ResShiftDenoiser(RecordingNet(), s)(z_t, t, lq, z_y)
    residual = ResShiftDenoiser(RecordingNet(), s, residual=True)(z_t, t, lq, z_y)
    torch.testing.assert_close(plain, 0.5 * z_t / torch.sqrt(4 * eta + 1) + 0.3 * lq + 0.01 * t.view(-1, 1, 1, 1))
    torch.testing.assert_close(residual, plain + z_y)


def test_stochastic_step_noise_is_used_in_order_from_t_minus_1_down() -> None:
    """Given draws equal the generator's own draws (in the same order), the given-noise path is the same sampler;
    the wrong shape is refused."""
    schedule = build_schedule("realsr-x4-v1")  # T = 15
    z_y = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(z_y.shape, generator=torch.Generator().manual_seed(2))

    def denoiser(z, t, lq, zy):  # noqa: ANN001, ANN202
        return 0.5 * z + 0.1 * t.float().view(-1, 1, 1, 1)

    drawn = sample(denoiser, schedule, z_y, z_y, noise=noise, sampler="stochastic",
                   generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    steps = torch.stack([torch.randn(z_y.shape, generator=gen) for _ in range(14)])
    given = sample(denoiser, schedule, z_y, z_y, noise=noise, sampler="stochastic", step_noise=steps)
    torch.testing.assert_close(given, drawn, rtol=0, atol=0)
    other = sample(denoiser, schedule, z_y, z_y, noise=noise, sampler="stochastic", step_noise=steps.flip(0))
    assert not torch.equal(other, drawn)
    with pytest.raises(ValueError, match="step_noise shape"):
        sample(denoiser, schedule, z_y, z_y, noise=noise, sampler="stochastic", step_noise=steps[:2])
