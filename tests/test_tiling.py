"""Tiling: layout, raised-cosine blending, position-consistent noise, tiled vs untiled agreement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tadsr.inference.backend import ModelBackend
from tadsr.inference.tiling import blend_ramp, tile_starts, tiled_super_resolve
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


class Pointwise:
    """A stand-in ``Backend``: the geometry and noise of a real one, and a network whose output pixel is its LR pixel
    plus its noise (the sum of its draws), x4 nearest: it depends on nothing else. ``seen``: what each call got."""

    def __init__(self, backend: ModelBackend) -> None:
        self.backend, self.seen = backend, []
        self.scale, self.size_multiple = backend.scale, backend.size_multiple
        self.noise_factor, self.device = backend.noise_factor, backend.device

    def draw_noise(self, height: int, width: int, seed: int) -> torch.Tensor:
        return self.backend.draw_noise(height, width, seed)

    def run(self, lr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.backend.sampler, None if noise.shape[0] == 1 else tuple(noise[1:].shape)))
        return F.interpolate(lr + noise.sum(0)[:, :3], scale_factor=4, mode="nearest")


def test_tiles_get_their_slice_of_the_image_and_of_one_noise_draw(tiny_student_file) -> None:  # noqa: ANN001
    """With a pointwise stand-in for the network, tiled and untiled results agree exactly."""
    backend = ModelBackend(load_model(tiny_student_file), device="cpu")
    lr = _smooth_lr()
    full = tiled_super_resolve(Pointwise(backend), lr, tile=0, seed=5)
    for tile, overlap, batch in ((32, 8, 1), (32, 0, 3), (64, 16, 2)):
        tiled = tiled_super_resolve(Pointwise(backend), lr, tile=tile, overlap=overlap, seed=5, batch_size=batch)
        torch.testing.assert_close(tiled, full, atol=1e-6, rtol=0)
    noise = backend.draw_noise(96, 128, seed=5)
    assert noise.shape == (1, 1, 48, 96, 128)
    assert torch.equal(noise[0], torch.randn(1, 48, 96, 128, generator=torch.Generator().manual_seed(5)))


def test_tiled_output_is_close_to_untiled_and_smoother_than_a_flat_average(tiny_student_file) -> None:  # noqa: ANN001
    """Bound (tiny random network, smooth 75x101 input, tile 32 / overlap 8): max |tiled - untiled| stays below 10%
    of the output's range, and below what ResShift's flat averaging gives on the same tiles."""
    backend = ModelBackend(load_model(tiny_student_file), device="cpu")
    lr = _smooth_lr()
    full = tiled_super_resolve(backend, lr, tile=0, seed=0)
    cosine = tiled_super_resolve(backend, lr, tile=32, overlap=8, seed=0)
    flat = tiled_super_resolve(backend, lr, tile=32, overlap=8, seed=0, blend="flat")
    assert cosine.shape == full.shape == (1, 3, 300, 404)
    err_cos, err_flat = (cosine - full).abs().max(), (flat - full).abs().max()
    assert err_cos < 0.1 * (full.max() - full.min())
    assert err_cos < err_flat


def test_progress_reports_every_tile(tiny_student_file) -> None:  # noqa: ANN001
    calls = []
    tiled_super_resolve(ModelBackend(load_model(tiny_student_file), device="cpu"), _smooth_lr(40, 70), tile=32,
                        overlap=8, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    # 40x70 is padded to 64x96: tile starts 0/24/32 by 0/24/48/64, 12 tiles in batches of 2
    assert calls == [(2, 12), (4, 12), (6, 12), (8, 12), (10, 12), (12, 12)]


def test_the_stochastic_sampler_tiles_slice_one_per_step_draw(teacher_file) -> None:  # noqa: ANN001
    """Eq. 2's per-step noise, like the prior's, is one draw per image that tiles slice: with a pointwise stand-in
    for the sampler (output = LR + prior noise + the sum of the step draws), tiled equals untiled exactly; the
    per-step draws follow the prior's on one seeded generator."""
    model = load_model(teacher_file)  # T = 4
    stochastic = Pointwise(ModelBackend(model, device="cpu", sampler="stochastic"))
    lr = _smooth_lr()
    full = tiled_super_resolve(stochastic, lr, tile=0, seed=5)
    tiled = tiled_super_resolve(stochastic, lr, tile=32, overlap=8, seed=5, batch_size=2)
    torch.testing.assert_close(tiled, full, atol=1e-6, rtol=0)
    seen = stochastic.seen
    assert seen[0] == ("stochastic", (3, 1, 48, 80, 112)) and seen[1] == ("stochastic", (3, 2, 48, 32, 32))  # padded
    draws = stochastic.draw_noise(96, 128, seed=5)
    assert draws.shape == (4, 1, 48, 96, 128)
    # the prior is the deterministic one's
    assert torch.equal(draws[0], ModelBackend(model, device="cpu").draw_noise(96, 128, seed=5)[0])
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(draws[1:], torch.stack([torch.randn(1, 48, 96, 128, generator=gen) for _ in range(4)])[1:])
    one_step = Pointwise(ModelBackend(model, device="cpu", steps=1, sampler="stochastic"))
    tiled_super_resolve(one_step, lr, tile=0, seed=5)  # one step: no per-step draws
    assert one_step.seen == [("stochastic", None)]
