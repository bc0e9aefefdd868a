"""What ``tadsr.inference.tiling.tiled_super_resolve`` reads of a model, for the diffusers-based upscalers.

The tiling needs a model's LR multiple and scale, and the shape of its per-image noise draw: ``unet.in_channels``
channels per ``unet.lq_factor`` LR pixels. For an SD x4-upscaler-style model the draw is the latent z_T
(``latent_channels``) and the LR image's noise (3 channels), both at the LR size: one (1, latent + 3, h, w) draw
per image that every tile slices, so tiles agree where they overlap and a run is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
