"""Tiled super-resolution with smooth blending and position-consistent noise.

The LR image is reflect-padded once to the model's size multiple. The prior noise is drawn once for the whole
padded latent from the seed, and every tile takes its slice of it, so a pixel gets the same noise whatever the
tiling. Overlapping tiles (in LR pixels) are super-resolved in batches and blended with raised-cosine ramps over
the overlaps (a partition of unity where tiles overlap by exactly ``overlap``), instead of ResShift's flat average
(docs/implementation-notes.md §5.1). Peak memory follows the tile size, except for the output accumulators
(4 floats per output pixel) and the latent noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from tadsr.diffusion.samplers import SamplerName
from tadsr.inference.padding import crop_to, pad_to_multiple, round_up
from tadsr.inference.pipeline import resolve_steps, super_resolve
from tadsr.model import SRModel


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering [0, length) with at least ``overlap`` shared pixels.

    Starts are multiples of ``align`` (the last one is ``length - tile``, which must be one too).
    """
    if tile >= length:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def blend_ramp(size: int, ramp: int, left: bool, right: bool) -> Tensor:
    """1-D weights of a tile: raised-cosine ramps of ``ramp`` pixels on the sides that overlap a neighbour."""
    w = torch.ones(size)
    ramp = min(ramp, size // 2)
    if ramp > 0:
        rise = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(ramp) + 0.5) / ramp)
        if left:
            w[:ramp] = rise
        if right:
            w[size - ramp:] = rise.flip(0)
    return w


def latent_noise(model: SRModel, height: int, width: int, seed: int, draws: int = 1) -> Tensor:
    """Standard normal prior noise (1, C, h, w) for a padded LR image of height x width, from ``seed`` on the CPU;
    with ``draws`` > 1, (draws, 1, C, h, w) from the same generator: draw 0 is that prior noise (the same whatever
    ``draws``), draws 1.. the stochastic sampler's per-step noise at t = T-1 .. 1."""
    f = model.config.unet.lq_factor  # LR pixels per latent pixel
    shape = (1, model.config.unet.in_channels, height // f, width // f)
    gen = torch.Generator().manual_seed(seed)
    if draws == 1:
        return torch.randn(shape, generator=gen)
    return torch.stack([torch.randn(shape, generator=gen) for _ in range(draws)])


def tiled_super_resolve(
    model: SRModel,
    lr: Tensor,
    tile: int = 0,
    overlap: int = 16,
    steps: int | None = None,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    blend: Literal["cosine", "flat"] = "cosine",
    sampler: SamplerName = "deterministic",
    network: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Super-resolve one LR image (1, 3, h, w) in [-1, 1] -> (1, 3, h s, w s) in [-1, 1], tile by tile.

    ``tile`` (LR pixels, rounded up to the model's size multiple; 0 = whole image) and ``overlap`` (LR pixels)
    set the tiling; ``batch_size`` tiles go through the network together. ``progress(done, total)`` is called
    after each batch of tiles. ``sampler`` is the T-step sampler: "deterministic" (Eq. 3) or "stochastic" (Eq. 2),
    whose per-step noise, like the prior's, is one draw for the whole image that each tile slices.
    ``blend="flat"`` averages overlaps uniformly, as ResShift does (for comparison). ``network(lr_tiles,
    noise_tiles)`` -> HR tiles in [-1, 1] replaces the model's own one-step call (an exported graph,
    ``tadsr.inference.onnx``); ``model`` then only needs its ``config``.
    """
    if lr.dim() != 4 or lr.shape[0] != 1:
        raise ValueError(f"lr must be one image (1, 3, H, W), got {tuple(lr.shape)}")
    cfg = model.config
    m, s, f = cfg.lr_multiple, cfg.scale, cfg.unet.lq_factor  # f: LR pixels per latent pixel
    padded, (h, w) = pad_to_multiple(lr, m)
    hp, wp = padded.shape[-2:]
    num_steps = cfg.schedule.num_steps
    noise, step_noise = latent_noise(model, hp, wp, seed), None
    if sampler == "stochastic" and resolve_steps(cfg.role, num_steps, steps) > 1:
        step_noise = latent_noise(model, hp, wp, seed, num_steps)[1:]  # (T-1, 1, C, h, w)
    run = dict(steps=steps, autocast_dtype=autocast_dtype, sampler=sampler)

    def call(lr_tiles: Tensor, noise_tiles: Tensor, step_tiles: Tensor | None) -> Tensor:
        if network is not None:
            return network(lr_tiles, noise_tiles)
        return super_resolve(model, lr_tiles, noise=noise_tiles, step_noise=step_tiles, **run)

    if tile <= 0 or (hp <= tile and wp <= tile):
        out = call(padded, noise.to(padded.device), step_noise)
        if progress:
            progress(1, 1)
        return crop_to(out, (h * s, w * s))
    tile = round_up(tile, m)
    th, tw = min(tile, hp), min(tile, wp)
    ramp = overlap * s if blend == "cosine" else 0
    boxes = [(y, x) for y in tile_starts(hp, th, overlap, f) for x in tile_starts(wp, tw, overlap, f)]
    acc = torch.zeros(1, 3, hp * s, wp * s)
    weight = torch.zeros(1, 1, hp * s, wp * s)
    for first in range(0, len(boxes), batch_size):
        batch = boxes[first:first + batch_size]
        lr_tiles = torch.cat([padded[..., y:y + th, x:x + tw] for y, x in batch])
        noise_tiles = torch.cat([
            noise[..., y // f:(y + th) // f, x // f:(x + tw) // f]
            for y, x in batch
        ]).to(padded.device)
        step_tiles = None if step_noise is None else torch.cat([
            step_noise[..., y // f:(y + th) // f, x // f:(x + tw) // f] for y, x in batch
        ], dim=1)
        out = call(lr_tiles, noise_tiles, step_tiles).cpu()
        for (y, x), tile_out in zip(batch, out, strict=True):
            wy = blend_ramp(th * s, ramp, left=y > 0, right=y + th < hp)
            wx = blend_ramp(tw * s, ramp, left=x > 0, right=x + tw < wp)
            w2 = wy[:, None] * wx[None, :]
            acc[0, :, y * s:(y + th) * s, x * s:(x + tw) * s] += tile_out * w2
            weight[0, 0, y * s:(y + th) * s, x * s:(x + tw) * s] += w2
        if progress:
            progress(min(first + batch_size, len(boxes)), len(boxes))
    return crop_to(acc / weight, (h * s, w * s)).to(lr.device)
