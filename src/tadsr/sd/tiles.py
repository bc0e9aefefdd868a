"""The tiling of the diffusers-based upscalers (the SD teacher's and the SD student's): ``SDUpscaler``.

The tiling needs a model's LR multiple and scale, and the shape of its per-image noise draw: ``unet.in_channels``
channels per ``unet.lq_factor`` LR pixels. For an SD x4-upscaler-style model the draw is the latent z_T
(``latent_channels``) and the LR image's noise (3 channels), both at the LR size: one (1, latent + 3, h, w) draw
per image that every tile slices, so tiles agree where they overlap and a run is reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tadsr.inference.tiling import tiled_super_resolve
from tadsr.inference.upscaler import UpscaleOptions, Upscaler


@dataclass(frozen=True)
class _Noise:
    in_channels: int
    lq_factor: int = 1


@dataclass(frozen=True)
class _Steps:
    num_steps: int = 1


@dataclass(frozen=True)
class TileGeometry:
    """A stand-in for ``SRModel.config`` in the tiling (module docstring)."""

    lr_multiple: int
    scale: int
    latent_channels: int
    role: str = "student"
    schedule: _Steps = field(default_factory=_Steps)

    @property
    def unet(self) -> _Noise:
        return _Noise(self.latent_channels + 3)


@dataclass(frozen=True)
class TiledModel:
    """What ``tiled_super_resolve(model, ..., network=...)`` takes as ``model``: only its ``config``."""

    config: TileGeometry


class SDUpscaler(Upscaler):
    """``Upscaler`` over an SD-style model ``net`` (``scale``, ``lr_multiple``, ``latent_channels``, ``device``):
    the same image handling and file guarantees as a tadsr model, float32; ``tiled`` runs a network over tiles, each
    with its slice of one (latent + LR) noise draw per image (module docstring)."""

    def __init__(self, net: Any, options: UpscaleOptions) -> None:
        self.net, self.device, self.dtype, self.options = net, net.device, torch.float32, options
        self.model = TiledModel(TileGeometry(net.lr_multiple, net.scale, net.latent_channels))

    @property
    def scale(self) -> int:
        return self.net.scale

    @property
    def size_multiple(self) -> int:
        return self.net.lr_multiple

    def tiled(self, lr: Tensor, network: Callable[[Tensor, Tensor], Tensor],
              progress: Callable[[int, int], None] | None) -> Tensor:
        """``network(lr_tiles, noise_tiles)`` over the tiles of ``lr`` (1, 3, h, w), blended."""
        opts = self.options
        return tiled_super_resolve(self.model, lr, tile=opts.tile, overlap=opts.tile_overlap, seed=opts.seed,
                                   batch_size=opts.batch_size, progress=progress, network=network)
