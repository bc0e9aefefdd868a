"""Tiled super-resolution with smooth blending and position-consistent noise, for any ``Backend``.

The LR image is reflect-padded once to the backend's size multiple. The noise is drawn once for the whole padded
image from the seed (``Backend.draw_noise``), and every tile takes its slice of it, so a pixel gets the same noise
whatever the tiling. Overlapping tiles (in LR pixels) are super-resolved in batches and blended with raised-cosine
ramps over the overlaps (a partition of unity where tiles overlap by exactly ``overlap``), instead of ResShift's flat
average (docs/implementation-notes.md §5.1). Peak memory follows the tile size, except for the output accumulators
(4 floats per output pixel) and the noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from tadsr.errors import BackendError, ConfigError
from tadsr.inference.backend import Backend
from tadsr.inference.padding import crop_to, pad_to_multiple, round_up

DEFAULT_TILE = 128  # LR pixels: `tadsr upscale`'s tile, for large images on small GPUs
DEFAULT_TILE_OVERLAP = 16  # LR pixels that neighbouring tiles share


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering [0, length) with at least ``overlap`` shared pixels.

    Starts are multiples of ``align`` (the last one is ``length - tile``, which must be one too).
    """
    if tile >= length:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def checked_run(backend: Backend, lr: Tensor, noise: Tensor) -> Tensor:
    """``backend.run(lr, noise)``, checked: every backend's output passes here (the tiler runs it, whole image or
    tiles, a fixed-size file's tiles too). A BackendError (one line) unless it is a floating-point tensor of shape
    (N, 3, h scale, w scale) for the (N, 3, h, w) ``lr``, and finite."""
    return checked_output(backend, lr, backend.run(lr, noise))


def checked_output(backend: Backend, lr: Tensor, out: object) -> Tensor:
    """``out``, what the backend returned for ``lr``, checked as ``checked_run`` says."""
    n, _, h, w = lr.shape
    s = backend.scale
    expected = (n, 3, h * s, w * s)
    if not isinstance(out, Tensor):
        raise BackendError(f"model returned an object of type {type(out).__name__} for a {tuple(lr.shape)} tile; "
                           f"expected a tensor {expected}")
    if tuple(out.shape) != expected:
        raise BackendError(f"model returned {tuple(out.shape)} for a {tuple(lr.shape)} tile; expected {expected}")
    if not out.is_floating_point():
        raise BackendError(f"model returned {out.dtype} values; expected floating point")
    if not bool(torch.isfinite(out).all()):
        raise BackendError("model returned non-finite values (NaN/inf)")
    return out


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


def tiled_super_resolve(
    backend: Backend,
    lr: Tensor,
    tile: int = 0,
    overlap: int = DEFAULT_TILE_OVERLAP,
    seed: int = 0,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    blend: Literal["cosine", "flat"] = "cosine",
) -> Tensor:
    """Super-resolve one LR image (1, 3, h, w) in [-1, 1] -> (1, 3, h s, w s) in [-1, 1] by ``backend``, tile by tile.

    The image is reflect-padded to ``backend.size_multiple``; its noise is one ``backend.draw_noise`` from ``seed``
    (the prior's and, for the stochastic T-step sampler, each step's), of which every tile takes its slice. ``tile``
    (LR pixels, rounded up to the size multiple; 0 = whole image) and ``overlap`` (LR pixels) set the tiling; tile
    starts are multiples of ``backend.noise_factor``; ``batch_size`` tiles go through ``backend.run`` together, and
    what it returns is checked (``checked_run``: a BackendError for a wrong shape or non-finite values).
    ``progress(done, total)`` is called after each batch of tiles. A backend with the optional ``begin_image``
    (``Backend``) gets the whole unpadded image once, before its noise is drawn. ``blend="flat"`` averages overlaps
    uniformly, as ResShift does (for comparison).

    A backend that tiles itself (the optional ``run_tiled``, ``Backend``: SeeSR's per-step latent tiling) is not
    cut into pixel tiles: whenever ``tile`` > 0 it gets the whole padded image, its whole noise, ``tile`` (rounded
    up to the size multiple), ``overlap``, ``batch_size`` and ``progress``, and its output is checked the same way;
    ``blend`` is then its own (``"flat"`` is refused).
    """
    if lr.dim() != 4 or lr.shape[0] != 1:
        raise ValueError(f"lr must be one image (1, 3, H, W), got {tuple(lr.shape)}")
    m, s, f = backend.size_multiple, backend.scale, backend.noise_factor  # f: LR pixels per noise pixel
    begin_image = getattr(backend, "begin_image", None)  # optional: a backend conditioned on the whole image
    if begin_image is not None:
        begin_image(lr)
    padded, (h, w) = pad_to_multiple(lr, m)
    hp, wp = padded.shape[-2:]
    noise = backend.draw_noise(hp, wp, seed)  # (D, 1, C, hp / f, wp / f)
    run_tiled = getattr(backend, "run_tiled", None)  # optional: a backend that tiles itself
    if run_tiled is not None and tile > 0:
        if blend != "cosine":
            raise ConfigError(f"blend {blend!r}: {type(backend).__name__} tiles itself and blends its own way")
        out = run_tiled(padded, noise.to(padded.device), tile=round_up(tile, m), overlap=overlap,
                        batch_size=batch_size, progress=progress)
        return crop_to(checked_output(backend, padded, out), (h * s, w * s))
    if tile <= 0 or (hp <= tile and wp <= tile):
        out = checked_run(backend, padded, noise.to(padded.device))
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
        noise_tiles = torch.cat([  # (D, N, C, th / f, tw / f)
            noise[..., y // f:(y + th) // f, x // f:(x + tw) // f] for y, x in batch
        ], dim=1).to(padded.device)
        out = checked_run(backend, lr_tiles, noise_tiles).cpu()
        for (y, x), tile_out in zip(batch, out, strict=True):
            wy = blend_ramp(th * s, ramp, left=y > 0, right=y + th < hp)
            wx = blend_ramp(tw * s, ramp, left=x > 0, right=x + tw < wp)
            w2 = wy[:, None] * wx[None, :]
            acc[0, :, y * s:(y + th) * s, x * s:(x + tw) * s] += tile_out * w2
            weight[0, 0, y * s:(y + th) * s, x * s:(x + tw) * s] += w2
        if progress:
            progress(min(first + batch_size, len(boxes)), len(boxes))
    return crop_to(acc / weight, (h * s, w * s)).to(lr.device)
