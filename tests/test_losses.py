"""Losses against hand computations; the discriminator's shapes and its use of time."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_UNET, randomize
from tadsr.diffusion.denoiser import ResShiftDenoiser
from tadsr.diffusion.process import ResShiftCondition, ResShiftProcess
from tadsr.diffusion.schedule import Schedule, ScheduleConfig
from tadsr.losses import (
    DistillationLoss,
    ScoreDistillationLoss,
    discriminator_hinge_loss,
    generator_adversarial_loss,
)
from tadsr.nets.discriminator import LatentDiscriminator
from tadsr.nets.unet import SwinUNet

SCHEDULE = Schedule(ScheduleConfig(num_steps=15))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _latents(seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = _gen(seed)
    return tuple(torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))


def affine_teacher(x: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """A network: x is the scaled input z_t / sqrt(kappa^2 eta_t + 1)."""
    return 0.7 * x + 0.1 * lq


TEACHER = ResShiftProcess(SCHEDULE, ResShiftDenoiser(affine_teacher, SCHEDULE))  # the process the losses call


def test_distillation_loss_by_hand() -> None:
    z_s = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])
    z_t = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 3.0]]]])
    torch.testing.assert_close(DistillationLoss()(z_s, z_t), torch.tensor([2.5, 5.0]))


def test_hinge_losses_by_hand() -> None:
    """Per logit (the authors'): the hinge on each of a sample's logits, then their mean; per sample mean (tadsr
    0.1's): the hinge on the mean logit. Sample 0 tells them apart: its logits straddle the margins, its means don't."""
    real = torch.tensor([[2.0, 0.0], [0.5, 0.5], [-1.0, -1.0]])
    fake = torch.tensor([[-2.0, 0.0], [0.5, 0.5], [1.0, 1.0]])
    torch.testing.assert_close(discriminator_hinge_loss(real, fake), torch.tensor([1.0, 2.0, 4.0]))
    torch.testing.assert_close(discriminator_hinge_loss(real, fake, per_logit=False), torch.tensor([0.0, 2.0, 4.0]))
    torch.testing.assert_close(generator_adversarial_loss(fake), torch.tensor([1.0, -0.5, -1.0]))


def test_hsd_is_zero_when_the_student_equals_the_teacher() -> None:
    z, z_y, lq = _latents()
    loss = ScoreDistillationLoss(TEACHER, "hsd")(z, z.clone(), ResShiftCondition(z_y, lq), _gen())
    assert torch.equal(loss, torch.zeros(2, dtype=loss.dtype))


def test_hsd_gradient_is_lambda_g_over_chw() -> None:
    z_s, z_tch, z_y = _latents(1)
    lq = torch.randn_like(z_s)
    hsd = ScoreDistillationLoss(TEACHER, "hsd")
    g, _ = hsd.direction(z_s, z_tch, ResShiftCondition(z_y, lq), _gen(5))
    z = z_s.clone().requires_grad_(True)
    lam = 0.3
    (lam * hsd(z, z_tch, ResShiftCondition(z_y, lq), _gen(5))).sum().backward()
    torch.testing.assert_close(z.grad, lam * g / (3 * 4 * 4))


def test_hsd_direction_matches_its_closed_form() -> None:
    """With shared noise, g = (1 - eta)/(kappa sqrt(eta)) [(z_s - z_tch) - (x0(x_s) - x0(x_tch))]
    (docs/implementation-notes.md §4.4)."""
    z_s, z_tch, z_y = _latents(2)
    lq = torch.randn_like(z_s)
    hsd = ScoreDistillationLoss(TEACHER, "hsd")
    gen = _gen(3)
    g, t = hsd.direction(z_s, z_tch, ResShiftCondition(z_y, lq), gen)
    gen = _gen(3)
    t_again = torch.randint(0, 3, (2,), generator=gen)
    noise = torch.randn(z_s.shape, generator=gen).to(z_s)
    assert torch.equal(t, t_again) and set(t.tolist()) <= {0, 1, 2}
    eta = SCHEDULE.eta[t].view(-1, 1, 1, 1)
    std = SCHEDULE.input_std[t].view(-1, 1, 1, 1)

    def x0(z0: torch.Tensor) -> torch.Tensor:
        z_t = z0 + eta * (z_y - z0) + 2 * eta.sqrt() * noise
        return affine_teacher(z_t / std, t, lq)

    expected = (1 - eta) / (2 * eta.sqrt()) * ((z_s - z_tch) - (x0(z_s) - x0(z_tch)))
    torch.testing.assert_close(g, expected)


def test_sds_vanishes_for_a_teacher_that_recovers_the_student() -> None:
    z_s, z_y, lq = _latents(4)
    oracle = lambda z_t, t, lq, z_y: z_s  # noqa: E731 - predicts exactly the clean latent
    g, _ = ScoreDistillationLoss(ResShiftProcess(SCHEDULE, oracle), "sds").direction(z_s, None,
                                                                                     ResShiftCondition(z_y, lq), _gen())
    torch.testing.assert_close(g, torch.zeros_like(g))


def test_quirk_flags_change_noise_and_scaling() -> None:
    z_s, z_tch, z_y = _latents(6)
    seen: list[torch.Tensor] = []

    def recording(x: torch.Tensor, t: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x

    for double in (False, True):
        seen.clear()
        process = ResShiftProcess(SCHEDULE, ResShiftDenoiser(recording, SCHEDULE), double_scaling=double)
        ScoreDistillationLoss(process, "sds", t_range=(2, 3)).direction(z_s, None, ResShiftCondition(z_y, z_y), _gen(1))
        gen = _gen(1)
        torch.randint(2, 3, (2,), generator=gen)
        noise = torch.randn(z_s.shape, generator=gen).to(z_s)
        eta = SCHEDULE.eta[2].item()
        z_t = z_s + eta * (z_y - z_s) + 2 * eta**0.5 * noise
        divisor = (4 * eta + 1) if double else (4 * eta + 1) ** 0.5
        torch.testing.assert_close(seen[0], z_t / divisor)
    for kind in ("uniform", "gaussian"):  # recover the added noise n from what the teacher sees (z_y = z_s)
        seen.clear()
        ScoreDistillationLoss(ResShiftProcess(SCHEDULE, ResShiftDenoiser(recording, SCHEDULE)), "sds", t_range=(2, 3),
                              noise=kind).direction(z_s, None, ResShiftCondition(z_s, z_s), _gen(2))
        eta = SCHEDULE.eta[2].item()
        n = (seen[0] * (4 * eta + 1) ** 0.5 - z_s) / (2 * eta**0.5)
        assert ((n >= -1e-9) & (n < 1 + 1e-9)).all() == (kind == "uniform")


def test_score_loss_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="kind"):
        ScoreDistillationLoss(TEACHER, "dmd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="t_range"):
        ScoreDistillationLoss(TEACHER, t_range=(0, 20))


def test_discriminator_shapes_and_time_dependence() -> None:
    unet = randomize(SwinUNet(TINY_UNET), seed=1).eval()
    x, lq = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    t = torch.tensor([0, 2, 4])
    with torch.no_grad():
        feats = unet.encoder_features(x, t, lq)
    assert [f.shape[1] for f in feats] == unet.feature_channels == [32, 64, 64, 64]
    for time_aware in (True, False):
        d = randomize(LatentDiscriminator(unet.feature_channels, 32, time_aware=time_aware), seed=2, std=0.1).eval()
        out = d(feats, t)
        assert out.shape == (3, 64 * sum(f.shape[2] * f.shape[3] for f in feats))  # every head's logits
        other = d(feats, torch.tensor([9, 9, 9]))
        assert torch.allclose(out, other) != time_aware
