"""The VAE (diffusers' ``AutoencoderKL``) over overlapping tiles, in bounded memory, with shared GroupNorm
statistics so that the tiles do not show.

Why the statistics: every GroupNorm of the VAE normalises by per-(sample, group) mean and variance over the WHOLE
feature map. A tile run on its own would normalise by its own statistics, and neighbouring tiles would differ in
brightness and contrast: seams. So every tile here normalises with the SAME per-group statistics (each GroupNorm's
``forward`` replaced for the call, then restored), found without ever holding more than one tile's activations,
by one of two methods (``stats``):

* **"estimate"** (the default): the input shrunk to fit one tile (nearest-exact, which keeps the values'
  distribution, then given the whole input's per-channel mean and std and clamped to its range) runs through the
  network once, untiled, and each GroupNorm's per-group mean and (biased) variance of its input is recorded. This
  is the "fast mode" of the tiled VAE SeeSR ships (``utils/vaehook.py:713-734``, ``estimate_group_norm`` :636-678;
  pkuliyi2015's multidiffusion-upscaler, where it is on by default). Cost: one tile's work more than the tiles.
* **"exact"**: the statistics the tiled network sees at full resolution, GroupNorm by GroupNorm in the order they
  run: for each, every tile runs up to it (the earlier ones fixed to the statistics already found, the pass
  stopped there) and its input's moments are pooled over the tiles, weighted by the tiles' blending weights at that
  layer's resolution so that the overlaps count once (``exact_stats``). The same bounded memory, but one partial
  pass over the tiles per GroupNorm: SD's decoder has 30, and a random SD-shaped decoder (32² latents in 16-latent
  tiles) took over 25x its untiled time on a 2-core CPU.

Then every tile runs with the fixed statistics, and the outputs are blended with raised-cosine ramps over the
overlaps (``tadsr.inference.tiling.blend_ramp``, a partition of unity where tiles overlap by ``overlap``;
normalised by the summed weights elsewhere). Memory: the input, the output and its (1, 1, H, W) weight, and one
tile's activations (the statistics are (N, groups) per layer): the network never sees an input larger than
``tile`` on a side (``tests/test_seesr_tiling.py`` checks it).

What is not exact, tiled: each tile sees only its own context (the convolutions' receptive field is cut at the
tile's border, hidden by the overlap and the ramps); the mid-block's self-attention attends within its tile only
(tile-local attention: the VAE's one global operation besides the GroupNorms); and "estimate"'s statistics are
those of the shrunk copy. On the tiny random test VAE (where nothing is local), mean |tiled - untiled| is 0.37 /
0.98 of the output's mean magnitude for the encoder / decoder with "estimate", 0.20 / 0.32 with "exact", and 0.35
/ 0.52 with each tile's own statistics; the error does not jump at tile borders in any case. An input within one
tile, or ``tile`` 0, is the plain untiled call (``vae.encode`` / ``vae.decode``), bit for bit.

Not chosen: the official default (``fast_mode`` off, ``vae_tile_forward`` :680-827 with ``GroupNormParam``
:458-534) pools full-resolution statistics too, but keeps every tile's activations between GroupNorms (in CPU
memory, which grows with the image), averages per-tile variances without the spread of the tile means, and counts
its padding twice; iterating "run every tile with the current statistics, pool new ones" for all layers at once
diverged on the tiny test VAE. The official tiles (1024 px for the encoder, 224 latents for the decoder,
test_seesr.py:105, 256-257) are padded by 32 px / 11 latents and cropped, not blended. Written for tadsr from a
reading of that code; nothing copied.

Only ``torch.nn.GroupNorm`` modules are fixed (SD's VAE has no other normalisation: diffusers ``models/
autoencoders/vae.py`` Encoder / Decoder, ``resnet.py`` ResnetBlock2D, ``attention_processor.py`` Attention's
``group_norm``, which gets (N, C, H W)).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tadsr.errors import ConfigError
from tadsr.inference.tiling import blend_ramp, tile_starts

DEFAULT_ENCODER_TILE = 1024  # image pixels (test_seesr.py:257 --vae_encoder_tiled_size)
DEFAULT_DECODER_TILE = 224  # latents (test_seesr.py:256 --vae_decoder_tiled_size)
VAE_FACTOR = 8  # image pixels per latent (SD's VAE: three x2 downsamplings)
StatsMethod = Literal["estimate", "exact"]
STATS_METHODS: tuple[StatsMethod, ...] = ("estimate", "exact")
DEFAULT_STATS: StatsMethod = "estimate"


@dataclass(frozen=True)
class GroupStats:
    """One GroupNorm's per-(sample, group) mean and biased variance, (N, groups) float64."""

    mean: Tensor
    var: Tensor


def group_moments(x: Tensor, groups: int) -> GroupStats:
    """The per-(sample, group) mean and biased variance of ``x`` (N, C, H, W), or (N, C, H W) as the VAE's
    attention feeds its GroupNorm, in float64: what ``F.group_norm`` normalises by."""
    xg = x.detach().to(torch.float64).reshape(x.shape[0], groups, -1)  # (N, G, C / G x spatial)
    return GroupStats(xg.mean(dim=2), xg.var(dim=2, unbiased=False))


def fixed_group_norm(x: Tensor, norm: nn.GroupNorm, stats: GroupStats) -> Tensor:
    """``norm(x)`` with the given statistics instead of x's own: per group (x - mean) / sqrt(var + eps), then the
    affine (torch ``F.group_norm``'s formula), computed in float32. The result is float32 under autocast (as
    autocast runs ``group_norm``), else in x's dtype."""
    n, c = x.shape[:2]
    g = norm.num_groups
    mean = stats.mean.to(device=x.device, dtype=torch.float32)
    inv = torch.rsqrt(stats.var.to(device=x.device, dtype=torch.float32) + norm.eps)
    spatial = (1,) * (x.dim() - 2)
    mean, inv = mean.reshape(n, g, 1, *spatial), inv.reshape(n, g, 1, *spatial)
    out = ((x.float().reshape(n, g, c // g, *x.shape[2:]) - mean) * inv).reshape(x.shape)
    if norm.affine:
        shape = (1, c) + (1,) * (x.dim() - 2)
        out = out * norm.weight.float().reshape(shape) + norm.bias.float().reshape(shape)
    return out if torch.is_autocast_enabled(x.device.type) else out.to(x.dtype)


@dataclass(frozen=True)
class _Box:
    """One tile: rows [y, y + h), columns [x, x + w) of the input, and which of its sides touch a neighbour."""

    y: int
    x: int
    h: int
    w: int
    top: bool
    bottom: bool
    left: bool
    right: bool

    def weight(self, height: int, width: int, overlap_h: int, overlap_w: int) -> Tensor:
        """(height, width) blending weight of this tile at that resolution: ramps of the overlap on shared sides."""
        wy = blend_ramp(height, overlap_h, self.top, self.bottom)
        wx = blend_ramp(width, overlap_w, self.left, self.right)
        return wy[:, None] * wx[None, :]


def tile_boxes(height: int, width: int, tile: int, overlap: int, align: int = 1) -> list[_Box]:
    """Tiles of ``tile`` x ``tile`` (clipped to the input) covering height x width with at least ``overlap``
    shared rows / columns, starts multiples of ``align`` (``tadsr.inference.tiling.tile_starts``)."""
    th, tw = min(tile, height), min(tile, width)
    return [_Box(y, x, th, tw, y > 0, y + th < height, x > 0, x + tw < width)
            for y in tile_starts(height, th, overlap, align) for x in tile_starts(width, tw, overlap, align)]


def group_norms(net: nn.Module) -> list[nn.GroupNorm]:
    """The network's GroupNorm modules."""
    return [m for m in net.modules() if isinstance(m, nn.GroupNorm)]


@contextmanager
def _patched(norms: list[nn.GroupNorm], forward: Callable[[int, nn.GroupNorm, Tensor], Tensor]) -> Iterator[None]:
    """Every norm's ``forward(x)`` replaced by ``forward(index, norm, x)`` for the block, restored after."""
    try:
        for i, norm in enumerate(norms):
            norm.forward = (lambda x, i=i, norm=norm: forward(i, norm, x))  # type: ignore[method-assign]
        yield
    finally:
        for norm in norms:
            norm.__dict__.pop("forward", None)


def estimate_stats(net: nn.Module, x: Tensor) -> tuple[list[GroupStats], list[int]]:
    """Every GroupNorm's statistics of its input as ``net(x)`` runs untiled, and the order the GroupNorms ran in
    (indices into ``group_norms(net)``, which is the order they were registered in, not always the order they run:
    diffusers' mid-block registers its attention before its resnets)."""
    norms = group_norms(net)
    found: list[GroupStats | None] = [None] * len(norms)
    order: list[int] = []

    def record(i: int, norm: nn.GroupNorm, h: Tensor) -> Tensor:
        found[i] = group_moments(h, norm.num_groups)
        order.append(i)
        return fixed_group_norm(h, norm, found[i])

    with _patched(norms, record):
        net(x)
    if len(order) != len(norms) or len(set(order)) != len(norms):
        raise ConfigError("tiled VAE: every GroupNorm of the network must run exactly once per call")
    return [s for s in found if s is not None], order


class _Stop(Exception):
    """Raised by a GroupNorm to end a forward pass early (``exact_stats``)."""


def weighted_moments(x: Tensor, groups: int, weight: Tensor) -> Tensor:
    """(3, N, groups) float64: per-(sample, group) sums of ``x`` and of x² and the count, each position of ``x``
    (N, C, H, W) or (N, C, H W) weighted by ``weight`` (H, W)."""
    xg = x.detach().to(torch.float64).reshape(x.shape[0], groups, -1, math.prod(x.shape[2:]))  # (N, G, C / G, HW)
    w = weight.to(device=x.device, dtype=torch.float64).reshape(-1)
    count = (w.sum() * xg.shape[2]).expand(xg.shape[:2])
    return torch.stack([(xg * w).sum((2, 3)), (xg * xg * w).sum((2, 3)), count])


def _pooled_moments(net: nn.Module, norms: list[nn.GroupNorm], x: Tensor, boxes: list[_Box], overlap: int, k: int,
                    stats: list[GroupStats | None]) -> Tensor:
    """GroupNorm ``k``'s input moments (``weighted_moments``) summed over the tiles, every tile run up to it with
    the GroupNorms of known ``stats`` fixed (``exact_stats``)."""
    total = torch.zeros(())
    for box in boxes:
        resolution = [(box.h, box.w)]  # the last (H, W) seen: an attention's GroupNorm gets (N, C, H W)

        def forward(i: int, norm: nn.GroupNorm, h: Tensor, box: _Box = box,
                    resolution: list[tuple[int, int]] = resolution) -> Tensor:
            nonlocal total
            if h.dim() == 4:
                resolution[0] = (h.shape[-2], h.shape[-1])
            known = stats[i]
            if i != k and known is not None:
                return fixed_group_norm(h, norm, known)
            hh, hw = resolution[0]
            if i != k or hh * hw != math.prod(h.shape[2:]):
                raise ConfigError(f"tiled VAE: GroupNorm {i} ran out of order or at an unknown resolution")
            weight = F.interpolate(box.weight(box.h, box.w, overlap, overlap)[None, None], size=(hh, hw),
                                   mode="area")[0, 0]  # the tile's blending weight at this layer's resolution
            total = total + weighted_moments(h, norm.num_groups, weight).cpu()
            raise _Stop

        with _patched(norms, forward), contextlib.suppress(_Stop):
            net(x[..., box.y:box.y + box.h, box.x:box.x + box.w])
    return total


def exact_stats(net: nn.Module, x: Tensor, boxes: list[_Box], overlap: int, order: list[int]) -> list[GroupStats]:
    """The statistics the tiled network sees at full resolution, GroupNorm by GroupNorm in their running
    ``order``: for the k-th, every tile runs up to it (those before it fixed to the statistics already found, the
    pass stopped there) and its input's moments are pooled over the tiles, each position weighted by its tile's
    blending weight at that layer's resolution (so that the overlaps count once). Exact for the tiled network, in
    bounded memory, at the cost of one partial pass over the tiles per GroupNorm."""
    norms = group_norms(net)
    stats: list[GroupStats | None] = [None] * len(norms)
    for k in order:
        total, squares, count = _pooled_moments(net, norms, x, boxes, overlap, k, stats)
        mean = total / count
        stats[k] = GroupStats(mean, (squares / count - mean * mean).clamp(min=0.0))
    return [s for s in stats if s is not None]


def _downscaled(x: Tensor, tile: int, align: int) -> Tensor:
    """``x`` shrunk by nearest-exact to fit ``tile`` on its longer side, its sides multiples of ``align``, with
    x's per-channel mean and std, clamped to x's range (vaehook.py ``vae_tile_forward``, fast mode)."""
    h, w = x.shape[-2:]
    k = tile / max(h, w)
    size = (max(align, int(h * k) // align * align), max(align, int(w * k) // align * align))
    small = F.interpolate(x, size=size, mode="nearest-exact")
    std, mean = torch.std_mean(x, dim=(0, 2, 3), keepdim=True)
    small_std, small_mean = torch.std_mean(small, dim=(0, 2, 3), keepdim=True)
    small = (small - small_mean) / small_std.clamp(min=1e-6) * std + mean
    return small.clamp(x.min(), x.max())


def _check(x: Tensor, tile: int, overlap: int, align: int, what: str, stats: StatsMethod) -> None:
    if stats not in STATS_METHODS:
        raise ConfigError(f"tiled VAE: stats must be one of {', '.join(STATS_METHODS)}, got {stats!r}")
    if x.dim() != 4:
        raise ConfigError(f"tiled VAE: the {what} must be (N, C, H, W), got {tuple(x.shape)}")
    if tile < 0 or overlap < 0 or (tile and overlap * 2 > tile):
        raise ConfigError(f"tiled VAE: tile {tile} and overlap {overlap} must be >= 0, the overlap at most half "
                          f"the tile")
    if tile and (tile % align or x.shape[-2] % align or x.shape[-1] % align):
        raise ConfigError(f"tiled VAE: the {what}'s sides {tuple(x.shape[-2:])} and the tile {tile} must be "
                          f"multiples of {align}")


def tiled_forward(net: nn.Module, x: Tensor, *, tile: int, overlap: int, align: int = 1,
                  stats: StatsMethod = DEFAULT_STATS) -> Tensor:
    """``net(x)`` over overlapping tiles of ``x`` (N, C, H, W), every tile with the same GroupNorm statistics,
    found by ``stats`` ("estimate" or "exact", module docstring), blended with ramps. ``tile`` and ``overlap`` in
    x's pixels; the output's size is read from the first tile's (its scale must be the same on every tile).
    ``align``: tile starts and sizes are multiples of it (an encoder's downsampling factor, so that every tile maps
    onto whole output pixels)."""
    h, w = x.shape[-2:]
    boxes = tile_boxes(h, w, tile, overlap, align)
    norms = group_norms(net)
    found, order = estimate_stats(net, _downscaled(x, tile, align))
    if stats == "exact":
        found = exact_stats(net, x, boxes, overlap, order)

    def apply(i: int, norm: nn.GroupNorm, h_: Tensor) -> Tensor:
        return fixed_group_norm(h_, norm, found[i])

    out: Tensor | None = None
    weight: Tensor | None = None
    with _patched(norms, apply):
        for box in boxes:
            y = net(x[..., box.y:box.y + box.h, box.x:box.x + box.w])
            oh, ow = y.shape[-2:]
            if out is None or weight is None:
                out = torch.zeros(*y.shape[:2], h * oh // box.h, w * ow // box.w, dtype=torch.float32, device=y.device)
                weight = torch.zeros(1, 1, *out.shape[-2:], dtype=torch.float32, device=y.device)
            sy, sx = box.y * oh // box.h, box.x * ow // box.w
            w2 = box.weight(oh, ow, overlap * oh // box.h, overlap * ow // box.w).to(y.device)
            out[..., sy:sy + oh, sx:sx + ow] += y.float() * w2
            weight[..., sy:sy + oh, sx:sx + ow] += w2
    assert out is not None and weight is not None
    return out / weight


def tiled_encode(vae: Any, x: Tensor, *, tile: int = DEFAULT_ENCODER_TILE, overlap: int = 64,
                 stats: StatsMethod = DEFAULT_STATS) -> tuple[Tensor, Tensor]:
    """The VAE posterior's mean and std (N, latent_channels, H / 8, W / 8) of images ``x`` (N, 3, H, W) in [-1, 1],
    encoded over tiles of ``tile`` pixels overlapping by ``overlap`` (multiples of 8; module docstring).
    ``vae.encoder`` runs tiled; ``quant_conv`` (1 x 1) and the posterior (diffusers ``DiagonalGaussianDistribution``:
    moments split into mean and log-variance, clamped to [-30, 20], std = exp(logvar / 2)) on the whole blended
    output. ``tile`` 0, or an image within one tile: ``vae.encode(x).latent_dist``, the untiled call."""
    _check(x, tile, overlap, VAE_FACTOR, "image", stats)
    if tile == 0 or (x.shape[-2] <= tile and x.shape[-1] <= tile):
        posterior = vae.encode(x).latent_dist
        return posterior.mean, posterior.std
    moments = tiled_forward(vae.encoder, x, tile=tile, overlap=overlap, align=VAE_FACTOR, stats=stats)
    quant_conv = getattr(vae, "quant_conv", None)
    if quant_conv is not None:
        moments = quant_conv(moments.to(next(quant_conv.parameters()).dtype))
    mean, logvar = moments.chunk(2, dim=1)
    return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))


def tiled_decode(vae: Any, z: Tensor, *, tile: int = DEFAULT_DECODER_TILE, overlap: int = 22,
                 stats: StatsMethod = DEFAULT_STATS) -> Tensor:
    """``vae.decode(z)`` (z UNscaled, (N, latent_channels, h, w)) -> (N, 3, 8 h, 8 w), over tiles of ``tile``
    latents overlapping by ``overlap`` (module docstring); ``post_quant_conv`` (1 x 1) runs on the whole latent
    first, ``vae.decoder`` tiled. ``tile`` 0, or a latent within one tile: ``vae.decode(z)``, the untiled call."""
    _check(z, tile, overlap, 1, "latent", stats)
    if tile == 0 or (z.shape[-2] <= tile and z.shape[-1] <= tile):
        return vae.decode(z, return_dict=False)[0]
    post_quant_conv = getattr(vae, "post_quant_conv", None)
    if post_quant_conv is not None:
        z = post_quant_conv(z.to(next(post_quant_conv.parameters()).dtype))
    return tiled_forward(vae.decoder, z, tile=tile, overlap=overlap, stats=stats)


def vae_tiles(latent_tile: int, latent_overlap: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((encoder tile, overlap) in image pixels, (decoder tile, overlap) in latents) for the sampler's latent tile
    and overlap: the VAE's tiles cover the same area as the UNet's (at least 1 latent overlap)."""
    overlap = max(1, latent_overlap)
    tile = max(latent_tile, 2 * overlap)
    return (tile * VAE_FACTOR, overlap * VAE_FACTOR), (tile, overlap)

