"""SeeSR / TAD-SeeSR tiled (issue 33, item 3): the tiled VAE with shared GroupNorm statistics
(``tadsr.seesr.tiled_vae``), the official per-step latent tiling (``tadsr.seesr.pipeline.tiled_eps`` /
``tiled_latents``, ``SeeSRBackend.run_tiled`` as ``tiled_super_resolve`` calls it) and the short-side rule.

The parts are the tiny ones of ``tests/test_seesr_pipeline.py`` (its ``parts`` fixture) and the converted folder of
``tests/test_seesr_upscale.py``. Their weights are random, so nothing is local: the tiny VAE's receptive field and
its mid-block attention span the whole test latent, and tiles change the result far more than they would with SD's
trained VAE and UNet. The tolerances below are what these parts give (measured, with a margin), stated relative to
the untiled output's mean magnitude; the exact-statistics VAE is held to a tighter bound than the estimate, and
neither may show a seam (an error that jumps at the tile borders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tadsr.inference.tiling import tile_starts, tiled_super_resolve
from tadsr.seesr import tiled_vae
from tadsr.seesr.pipeline import LatentTiling, SeeSRBackend, guided_eps, tiled_eps
from test_seesr_convert import inputs  # noqa: F401  (a module fixture: the tiny release's parts)
from test_seesr_pipeline import FIXTURES, parts  # noqa: F401  (a module fixture: the tiny SeeSR parts)
from test_seesr_upscale import _lr, _run, converted  # noqa: F401  (a module fixture: a converted folder)


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(FIXTURES / "vae")).eval()


def smooth(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A smooth image in [-1, 1]: uniform noise at 1/32 of the size, bicubic up."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(*shape[:2], max(2, shape[2] // 32), max(2, shape[3] // 32), generator=gen)
    up = torch.nn.functional.interpolate(small, size=shape[2:], mode="bicubic", align_corners=False)
    return up.clamp(0, 1) * 2 - 1


def borders(length: int, tile: int, overlap: int, align: int, scale: float) -> list[int]:
    """Output rows (or columns) where a tile starts or ends, for tiles of the input as the tiler lays them."""
    tile = min(tile, length)
    ends = {s for s in tile_starts(length, tile, overlap, align) if s > 0}
    ends |= {s + tile for s in tile_starts(length, tile, overlap, align) if s + tile < length}
    return sorted(int(e * scale) for e in ends)


def seam_ratio(err: torch.Tensor, rows: list[int], cols: list[int]) -> float:
    """How much the error jumps between neighbouring pixels at the tile borders, relative to everywhere: ~1 when
    the tiles do not show, well above 1 at a seam."""
    dy = (err[..., 1:, :] - err[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    dx = (err[..., 1:] - err[..., :-1]).abs().mean(dim=(0, 1, 2))
    at = torch.cat([dy[[r - 1 for r in rows]], dx[[c - 1 for c in cols]]]).mean()
    return (at / torch.cat([dy, dx]).mean()).item()


# --- the tiled VAE --------------------------------------------------------------------------------------------------

def test_fixed_group_norm_with_its_own_statistics_is_group_norm() -> None:
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    gen = torch.Generator().manual_seed(0)
    for x in (torch.randn(2, 8, 5, 6, generator=gen) * 3 + 1, torch.randn(2, 8, 30, generator=gen)):  # 3-D: attention
        out = tiled_vae.fixed_group_norm(x, norm, tiled_vae.group_moments(x, 4))
        assert (out - norm(x)).abs().max().item() < 1e-5


@torch.no_grad()
def test_tiled_vae_within_one_tile_is_the_untiled_call(vae) -> None:
    x = smooth((1, 3, 64, 48))
    posterior = vae.encode(x).latent_dist
    z = posterior.mean
    for tile in (0, 64, 96):
        mean, std = tiled_vae.tiled_encode(vae, x, tile=tile, overlap=16)
        assert torch.equal(mean, posterior.mean) and torch.equal(std, posterior.std)
    for tile in (0, 8, 12):
        assert torch.equal(tiled_vae.tiled_decode(vae, z, tile=tile, overlap=2), vae.decode(z, return_dict=False)[0])


@torch.no_grad()
def test_the_tiled_vae_runs_one_tile_at_a_time(vae) -> None:
    """Bounded memory: the networks never see more than a tile (the estimate's copy is shrunk to one), and each
    tile once after the estimate."""
    seen: list[tuple[int, ...]] = []
    hooks = [net.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
             for net in (vae.encoder, vae.decoder)]
    try:
        mean, _ = tiled_vae.tiled_encode(vae, smooth((1, 3, 128, 192)), tile=64, overlap=16)
        out = tiled_vae.tiled_decode(vae, mean, tile=8, overlap=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert mean.shape == (1, 4, 16, 24) and out.shape == (1, 3, 128, 192)
    encoder = [s for s in seen if s[1] == 3]
    decoder = [s for s in seen if s[1] == 4]
    assert max(max(s[-2:]) for s in encoder) <= 64 and max(max(s[-2:]) for s in decoder) <= 8
    assert len(encoder) == 1 + len(tile_starts(128, 64, 16, 8)) * len(tile_starts(192, 64, 16, 8))
    assert len(decoder) == 1 + len(tile_starts(16, 8, 2)) * len(tile_starts(24, 8, 2))


# measured on these random weights, mean |tiled - untiled| / mean |untiled|: encoder (tile 128 px, overlap 32)
# estimate 0.37, exact 0.20; decoder (tile 16 latents, overlap 4) estimate 0.98, exact 0.32; per-tile statistics
# (no sharing) 0.35 and 0.52. The seam ratios are 0.8-1.1 for all.
VAE_TOLERANCE = {("encoder", "estimate"): 0.5, ("encoder", "exact"): 0.3,
                 ("decoder", "estimate"): 1.2, ("decoder", "exact"): 0.45}


@pytest.mark.parametrize("stats", tiled_vae.STATS_METHODS)
@torch.no_grad()
def test_the_tiled_vae_is_near_the_untiled_and_shows_no_seam(vae, stats: str) -> None:
    x = smooth((1, 3, 192, 256))
    z = vae.encode(x).latent_dist.mean
    for part, inp, tile, overlap, align, scale in (("encoder", x, 128, 32, 8, 1 / 8), ("decoder", z, 16, 4, 1, 8)):
        net = getattr(vae, part)
        ref = net(inp)
        seen: list[tuple[int, ...]] = []
        hook = net.register_forward_pre_hook(lambda _, args, seen=seen: seen.append(tuple(args[0].shape)))
        try:
            out = tiled_vae.tiled_forward(net, inp, tile=tile, overlap=overlap, align=align, stats=stats)
        finally:
            hook.remove()
        assert max(max(s[-2:]) for s in seen) <= tile  # "exact" too runs one (partial) tile at a time
        err = out - ref
        assert err.abs().mean().item() / ref.abs().mean().item() <= VAE_TOLERANCE[part, stats], part
        rows = borders(inp.shape[-2], tile, overlap, align, scale)
        cols = borders(inp.shape[-1], tile, overlap, align, scale)
        assert seam_ratio(err, rows, cols) < 1.5, part


def test_bad_tiles_are_one_line(vae) -> None:
    from tadsr.errors import ConfigError

    with pytest.raises(ConfigError, match="multiples of 8"):
        tiled_vae.tiled_encode(vae, torch.zeros(1, 3, 64, 60), tile=32, overlap=8)
    with pytest.raises(ConfigError, match="at most half the tile"):
        tiled_vae.tiled_decode(vae, torch.zeros(1, 4, 16, 16), tile=8, overlap=6)
    with pytest.raises(ConfigError, match="stats must be one of"):
        tiled_vae.tiled_decode(vae, torch.zeros(1, 4, 16, 16), tile=8, overlap=2, stats="mean")  # type: ignore[arg-type]


# --- the latent tiling of the sampler -------------------------------------------------------------------------------

@torch.no_grad()
def test_tiled_eps_within_one_tile_is_guided_eps(parts) -> None:  # noqa: F811
    gen = torch.Generator().manual_seed(0)
    z, cond = torch.randn(1, 4, 8, 10, generator=gen), torch.rand(1, 3, 64, 80, generator=gen)
    text, image = torch.randn(1, 77, 32, generator=gen), torch.randn(1, 5, 512, generator=gen)
    ref = guided_eps(parts, z, 981, cond, text, None, image, 0.0)
    calls: list[int] = []
    assert torch.equal(tiled_eps(parts, z, 981, cond, text, None, image, 0.0, LatentTiling(10, 2), calls.append), ref)
    tiled = tiled_eps(parts, z, 981, cond, text, None, image, 0.0, LatentTiling(6, 2, batch_size=3), calls.append)
    assert calls == [1, 3, 1]  # 4 tiles in batches of 3
    # measured: mean |tiled - whole| 0.45 of mean |whole| (random networks, 6-latent tiles of an 8 x 10 latent)
    assert (tiled - ref).abs().mean().item() < 0.6 * ref.abs().mean().item()


def test_the_backend_tiled_within_one_tile_is_the_untiled_run(parts) -> None:  # noqa: F811
    lr = smooth((1, 3, 24, 32), seed=1)
    for variant, steps in (("tad-seesr", None), ("seesr", 2)):
        backend = SeeSRBackend(parts, variant=variant, steps=steps)
        ref = tiled_super_resolve(backend, lr, tile=0, seed=3)
        assert torch.equal(tiled_super_resolve(backend, lr, tile=32, overlap=4, seed=3), ref), variant


def test_one_noise_draw_per_image_whatever_the_tile(parts) -> None:  # noqa: F811
    """The whole image's draw, at the latent size, reaches the sampler unsliced for any tile (so a latent pixel
    gets the same noise whatever the tiling); the same seed gives the same bits."""
    backend = SeeSRBackend(parts, variant="tad-seesr", tags="")
    seen: list[torch.Tensor] = []
    run_tiled = backend.run_tiled

    def spy(lr, noise, **kw):
        seen.append(noise.clone())
        return run_tiled(lr, noise, **kw)

    backend.run_tiled = spy  # type: ignore[method-assign]
    lr = smooth((1, 3, 24, 32), seed=2)
    first = tiled_super_resolve(backend, lr, tile=16, overlap=4, seed=5)
    assert torch.equal(tiled_super_resolve(backend, lr, tile=16, overlap=4, seed=5), first)
    tiled_super_resolve(backend, lr, tile=24, overlap=4, seed=5)
    assert len(seen) == 3 and all(torch.equal(n, backend.draw_noise(24, 32, 5)) for n in seen)
    assert seen[0].shape == (2, 1, 4, 12, 16)


def test_seesr_tiled_is_near_the_untiled_with_no_seam_and_reports_every_tile_and_step(parts) -> None:  # noqa: F811
    """SeeSR's two guided DDPM steps on a 48 x 64 LR (latent 24 x 32) in latent tiles of 12 overlapping by 4
    (--tile 24 --tile-overlap 8). Measured on these random networks: mean |tiled - untiled| 0.42 of mean
    |untiled| (0.44; TAD-SeeSR's one step: 0.17), seam ratio 0.97 (the untiled output's own at those rows: 0.98)."""
    backend = SeeSRBackend(parts, variant="seesr", steps=2)
    lr = smooth((1, 3, 48, 64), seed=4)
    ref = tiled_super_resolve(backend, lr, tile=0, seed=1)
    calls: list[tuple[int, int]] = []
    out = tiled_super_resolve(backend, lr, tile=24, overlap=8, seed=1, batch_size=2,
                              progress=lambda done, total: calls.append((done, total)))
    tiles = len(tile_starts(24, 12, 4)) * len(tile_starts(32, 12, 4))
    assert calls[-1] == (2 * tiles, 2 * tiles) and len(calls) == 2 * -(-tiles // 2)
    err = out - ref
    assert err.abs().mean().item() < 0.6 * ref.abs().mean().item()
    rows, cols = borders(24, 12, 4, 1, 8), borders(32, 12, 4, 1, 8)  # latent tile borders on the output
    assert seam_ratio(err, rows, cols) < 1.5


def test_run_tiled_refuses_a_flat_blend(parts) -> None:  # noqa: F811
    from tadsr.errors import ConfigError

    with pytest.raises(ConfigError, match="tiles itself"):
        tiled_super_resolve(SeeSRBackend(parts, variant="tad-seesr"), smooth((1, 3, 16, 16)), tile=8, overlap=2,
                            blend="flat")


# --- the short-side rule --------------------------------------------------------------------------------------------

def test_the_short_side_rule_enlarges_small_images_and_gives_4x_back(parts) -> None:  # noqa: F811
    """test_seesr.py:195-206 with a process size of 96 (so the least side is 24 and the test stays small): a
    14 x 20 LR runs as 24 x 34 -> condition 96 x 136, latent 12 x 17; the output is 4 x the LR, 56 x 80."""
    from tadsr.seesr.pipeline import processing_sizes

    lr = smooth((1, 3, 14, 20), seed=5)
    ruled = SeeSRBackend(parts, variant="tad-seesr", process_size=96)
    assert processing_sizes(14, 20, 96) == ((24, 34), (96, 136), (96, 136))
    assert ruled.draw_noise(14, 20, 0).shape == (2, 1, 4, 12, 17)
    plain = SeeSRBackend(parts, variant="tad-seesr")
    assert plain.draw_noise(14, 20, 0).shape == (2, 1, 4, 7, 10)
    out = tiled_super_resolve(ruled, lr, tile=0, seed=0)
    assert out.shape == (1, 3, 56, 80) and not torch.equal(out, tiled_super_resolve(plain, lr, tile=0, seed=0))
    assert tiled_super_resolve(ruled, lr, tile=16, overlap=4, seed=0).shape == (1, 3, 56, 80)
    big = smooth((1, 3, 26, 30), seed=6)  # no side under 24: the rule does nothing
    assert torch.equal(tiled_super_resolve(ruled, big, tile=0, seed=0), tiled_super_resolve(plain, big, tile=0, seed=0))


# --- the command ----------------------------------------------------------------------------------------------------

def test_tadsr_upscale_tiles_a_seesr_folder_in_latent_space(converted: Path, tmp_path: Path) -> None:  # noqa: F811
    _lr(tmp_path / "in", "a.png", side=32)
    code, lines = _run("upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "whole"), "--model",
                       str(converted), "-t", "0", "-q")
    assert code == 0, lines
    code, lines = _run("upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "tiled"), "--model",
                       str(converted), "-t", "16", "--tile-overlap", "4", "-q")
    assert code == 0, lines
    whole = np.asarray(Image.open(tmp_path / "whole" / "a.png")).astype(int)
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "a.png")).astype(int)
    assert tiled.shape == whole.shape == (128, 144, 3)
    assert 0 < np.abs(tiled - whole).mean() < 20  # tiled: another computation, near the whole one (measured 11.3)
