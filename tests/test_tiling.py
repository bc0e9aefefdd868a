"""Tiling: layout, raised-cosine blending, position-consistent noise, tiled vs untiled agreement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tadsr.inference.tiling as tiling
from tadsr.inference.tiling import blend_ramp, latent_noise, tile_starts, tiled_super_resolve
from tadsr.model import load_model


@pytest.mark.parametrize(("length", "tile", "overlap", "align"), [(100, 32, 8, 1), (96, 32, 8, 2), (64, 64, 8, 1),
                                                                  (200, 64, 16, 4), (33, 32, 0, 1)])
def test_tile_starts_cover_with_the_overlap(length: int, tile: int, overlap: int, align: int) -> None:
    starts = tile_starts(length, tile, overlap, align)
    assert starts[0] == 0 and starts[-1] + min(tile, length) >= length
    assert all(s % align == 0 for s in starts)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_cosine_ramps_are_a_partition_of_unity_on_an_exact_overlap() -> None:
    left = blend_ramp(64, 16, left=False, right=True)
    right = blend_ramp(64, 16, left=True, right=False)
    torch.testing.assert_close(left[-16:] + right[:16], torch.ones(16))
    assert left[:48].eq(1).all() and right[16:].eq(1).all() and (right[:16] > 0).all()


def _smooth_lr(h: int = 75, w: int = 101) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([torch.sin(3 * x + y), torch.cos(2 * y), x * y]).unsqueeze(0) * 0.8


def test_tiles_get_their_slice_of_the_image_and_of_one_noise_draw(tiny_student_file, monkeypatch) -> None:  # noqa: ANN001
    """With a pointwise stand-in for the network, tiled and untiled results agree exactly."""
    model = load_model(tiny_student_file)

    def pointwise(model, lr, noise, **_):  # noqa: ANN001, ANN202
        # output pixel = its LR pixel + its (nearest) noise value: depends on nothing else
        return F.interpolate(lr + noise[:, :3], scale_factor=4, mode="nearest")

    monkeypatch.setattr(tiling, "super_resolve", pointwise)
    lr = _smooth_lr()
    full = tiled_super_resolve(model, lr, tile=0, seed=5)
    for tile, overlap, batch in ((32, 8, 1), (32, 0, 3), (64, 16, 2)):
        tiled = tiled_super_resolve(model, lr, tile=tile, overlap=overlap, seed=5, batch_size=batch)
        torch.testing.assert_close(tiled, full, atol=1e-6, rtol=0)
    noise = latent_noise(model, 96, 128, seed=5)
    assert torch.equal(noise, torch.randn(1, 48, 96, 128, generator=torch.Generator().manual_seed(5)))


def test_tiled_output_is_close_to_untiled_and_smoother_than_a_flat_average(tiny_student_file) -> None:  # noqa: ANN001
    """Bound (tiny random network, smooth 75x101 input, tile 32 / overlap 8): max |tiled - untiled| stays below 10%
    of the output's range, and below what ResShift's flat averaging gives on the same tiles."""
    model = load_model(tiny_student_file)
    lr = _smooth_lr()
    full = tiled_super_resolve(model, lr, tile=0, seed=0)
    cosine = tiled_super_resolve(model, lr, tile=32, overlap=8, seed=0)
    flat = tiled_super_resolve(model, lr, tile=32, overlap=8, seed=0, blend="flat")
    assert cosine.shape == full.shape == (1, 3, 300, 404)
    err_cos, err_flat = (cosine - full).abs().max(), (flat - full).abs().max()
    assert err_cos < 0.1 * (full.max() - full.min())
    assert err_cos < err_flat


def test_progress_reports_every_tile(tiny_student_file) -> None:  # noqa: ANN001
    calls = []
    tiled_super_resolve(load_model(tiny_student_file), _smooth_lr(40, 70), tile=32, overlap=8, batch_size=2,
                        progress=lambda done, total: calls.append((done, total)))
    # 40x70 is padded to 64x96: tile starts 0/24/32 by 0/24/48/64, 12 tiles in batches of 2
    assert calls == [(2, 12), (4, 12), (6, 12), (8, 12), (10, 12), (12, 12)]


def test_the_stochastic_sampler_tiles_slice_one_per_step_draw(teacher_file, monkeypatch) -> None:  # noqa: ANN001
    """Eq. 2's per-step noise, like the prior's, is one draw per image that tiles slice: with a pointwise stand-in
    for the sampler (output = LR + prior noise + the sum of the step draws), tiled equals untiled exactly; the
    per-step draws follow the prior's on one seeded generator."""
    model = load_model(teacher_file)  # T = 4
    seen = []

    def pointwise(model, lr, noise, step_noise=None, sampler="deterministic", **_):  # noqa: ANN001, ANN202
        seen.append((sampler, None if step_noise is None else tuple(step_noise.shape)))
        total = noise if step_noise is None else noise + step_noise.sum(0)
        return F.interpolate(lr + total[:, :3], scale_factor=4, mode="nearest")

    monkeypatch.setattr(tiling, "super_resolve", pointwise)
    lr = _smooth_lr()
    full = tiled_super_resolve(model, lr, tile=0, seed=5, sampler="stochastic")
    tiled = tiled_super_resolve(model, lr, tile=32, overlap=8, seed=5, batch_size=2, sampler="stochastic")
    torch.testing.assert_close(tiled, full, atol=1e-6, rtol=0)
    assert seen[0] == ("stochastic", (3, 1, 48, 80, 112)) and seen[1] == ("stochastic", (3, 2, 48, 32, 32))  # padded
    draws = latent_noise(model, 96, 128, seed=5, draws=4)
    assert torch.equal(draws[0], latent_noise(model, 96, 128, seed=5))  # the prior is the deterministic one's
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(draws[1:], torch.stack([torch.randn(1, 48, 96, 128, generator=gen) for _ in range(4)])[1:])
    seen.clear()
    tiled_super_resolve(model, lr, tile=0, seed=5, steps=1, sampler="stochastic")  # one step: no per-step draws
    assert seen == [("stochastic", None)]
