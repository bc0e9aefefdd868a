"""The ResShift Swin-UNet (``UNetModelSwin``), the denoiser of the teacher and of the TAD-SR student.

A guided-diffusion style UNet with scale-shift-norm ResBlocks, a Swin layer after the first ResBlock of every level
listed in ``attention_resolutions`` (encoder and decoder) and in the middle block, and the LR image concatenated on
channels (through a small strided-conv feature extractor when the LR is larger than the latent, as for faces).
Architecture, attribute names and key layout follow docs/implementation-notes.md §3.1/§3.3 so that the official
checkpoints load strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tadsr.config_checks import check_ranges
from tadsr.errors import ConfigError
from tadsr.nets.common import Conv1x1, Upsample, normalization, timestep_embedding, zero_module
from tadsr.nets.swin import SwinLayer


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of the Swin-UNet; defaults are the official real-SR x4 network (118,593,583 parameters).

    ``image_size`` is the latent size the network is built for (it fixes each Swin level's window and shift,
    docs/implementation-notes.md §3.1b); other sizes that are multiples of ``size_multiple`` run too. ``lq_size``
    is the LR condition's size at that latent size: equal to ``image_size`` means plain concatenation, larger means
    a feature extractor with log2(lq_size / image_size) stride-2 stages.

    The network is pure architecture: input scaling and any skip from z_y belong to the denoiser wrapper
    (``tadsr.diffusion.denoiser.ResShiftDenoiser``).
    """

    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    attention_resolutions: tuple[int, ...] = (64, 32, 16, 8)
    dropout: float = 0.0
    num_head_channels: int = 32
    swin_depth: int = 2
    swin_embed_dim: int = 192
    window_size: int = 8
    mlp_ratio: float = 4.0
    lq_size: int = 64
    lq_channels: int = 3

    def __post_init__(self) -> None:
        check_ranges(self, "model.unet", {
            "image_size": (8, 4096), "in_channels": (1, 1024), "out_channels": (1, 1024),
            "model_channels": (32, 1024), "channel_mult": (1, 16), "num_res_blocks": (1, 16),
            "attention_resolutions": (1, 4096), "dropout": (0, 1), "num_head_channels": (1, 1024),
            "swin_depth": (1, 16), "swin_embed_dim": (32, 4096), "window_size": (1, 64), "mlp_ratio": (0.25, 16),
            "lq_size": (8, 16384), "lq_channels": (1, 16)})
        if not 1 <= len(self.channel_mult) <= 8:
            raise ConfigError(f"model.unet.channel_mult = {self.channel_mult!r}: needs 1 to 8 levels")
        if len(self.num_res_blocks) != len(self.channel_mult):
            raise ConfigError("num_res_blocks needs one entry per channel_mult level")
        if self.swin_embed_dim % self.num_head_channels:
            raise ConfigError("swin_embed_dim must be a multiple of num_head_channels")
        ratio = self.lq_size / self.image_size
        if ratio < 1 or 2 ** round(math.log2(ratio)) != ratio:
            raise ConfigError(f"lq_size / image_size must be a power of two >= 1, got {self.lq_size}/{self.image_size}")
        for c in (self.model_channels, *(m * self.model_channels for m in self.channel_mult), self.swin_embed_dim):
            if c % 32:
                raise ConfigError(f"every channel count must be a multiple of 32 (GroupNorm32), got {c}")

    @property
    def size_multiple(self) -> int:
        """Latent H and W must be multiples of this: every level must hold whole windows."""
        deepest = self.image_size // 2 ** (len(self.channel_mult) - 1)
        return 2 ** (len(self.channel_mult) - 1) * min(self.window_size, deepest)

    @property
    def lq_factor(self) -> int:
        """lq_size / image_size: how much larger the LR condition is than the latent."""
        return self.lq_size // self.image_size


class TimestepBlock(nn.Module):
    """A module whose forward takes the time embedding as a second argument."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepSequential(nn.Sequential):
    """nn.Sequential that passes the time embedding to the TimestepBlocks among its children."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """GN -> SiLU -> conv; GN(h) (1 + scale) + shift from the time embedding -> SiLU -> dropout -> zero conv; + skip."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else Conv1x1(channels, out_channels)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        for layer in self.out_layers[1:]:
            h = layer(h)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``op``)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


def _lq_feature_extractor(stages: int, in_channels: int) -> tuple[nn.Module, int]:
    """[conv3x3 (c -> 16 * 2^k), SiLU, stride-2 conv (-> 32 * 2^k)] x stages; Identity for 0 stages."""
    if stages == 0:
        return nn.Identity(), in_channels
    layers: list[nn.Module] = []
    cin, base = in_channels, 16
    for _ in range(stages):
        layers += [nn.Conv2d(cin, base, 3, padding=1), nn.SiLU(), Downsample(base, 2 * base)]
        cin = base = 2 * base
    return nn.Sequential(*layers), cin


class SwinUNet(nn.Module):
    """ResShift ``UNetModelSwin``: ``forward(x, t, lq)`` -> x0-hat.

    x: (N, in_channels, H, W) the already scaled network input z_t / sqrt(kappa^2 eta_t + 1), H and W multiples of
    ``config.size_multiple``; t: (N,) integer timestep indices 0..T-1; lq: (N, 3, H * lq_factor, W * lq_factor)
    LR image in [-1, 1]. Returns (N, out_channels, H, W).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        emb_dim = 4 * cfg.model_channels
        heads = cfg.swin_embed_dim // cfg.num_head_channels
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        stages = int(round(math.log2(cfg.lq_factor)))
        self.feature_extractor, lq_feat = _lq_feature_extractor(stages, cfg.lq_channels)

        def swin(channels: int, resolution: int) -> SwinLayer:
            return SwinLayer(channels, cfg.swin_embed_dim, heads, cfg.window_size, cfg.swin_depth, resolution,
                             cfg.mlp_ratio)

        ch = cfg.channel_mult[0] * cfg.model_channels
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels + lq_feat, ch, 3, padding=1))])
        skip_channels = [ch]
        res = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for i in range(cfg.num_res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, cfg.dropout, mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if res in cfg.attention_resolutions and i == 0:
                    layers.append(swin(ch, res))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)
                res //= 2
        self.block_channels = tuple(skip_channels)  # output channels of each input block
        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_dim, cfg.dropout), swin(ch, res), ResBlock(ch, emb_dim, cfg.dropout)
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, cfg.dropout, mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if res in cfg.attention_resolutions and i == 0:
                    layers.append(swin(ch, res))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    res *= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def _check(self, x: Tensor, t: Tensor, lq: Tensor) -> None:
        cfg = self.config
        m = cfg.size_multiple
        if x.dim() != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % m or x.shape[3] % m:
            raise ValueError(
                f"UNet input must be (N, {cfg.in_channels}, H, W) with H, W multiples of {m}, got {tuple(x.shape)}"
            )
        want = (x.shape[0], cfg.lq_channels, x.shape[2] * cfg.lq_factor, x.shape[3] * cfg.lq_factor)
        if tuple(lq.shape) != want:
            raise ValueError(f"lq must have shape {want} for input {tuple(x.shape)}, got {tuple(lq.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")

    def encode(self, x: Tensor, t: Tensor, lq: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """Encoder half: returns (middle-block output, the input-block outputs, time embedding)."""
        self._check(x, t, lq)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        h = torch.cat([x, self.feature_extractor(lq).to(x.dtype)], dim=1)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        return self.middle_block(h, emb), skips, emb

    @property
    def feature_indices(self) -> list[int]:
        """Input blocks whose outputs the time-aware discriminator reads: each Downsample and the last block
        (hs[3], hs[6], hs[9], hs[11] for the real-SR x4 network; docs/implementation-notes.md §4.5)."""
        downs = [i for i, block in enumerate(self.input_blocks) if isinstance(block[0], Downsample)]
        return [*downs, len(self.input_blocks) - 1]

    @property
    def feature_channels(self) -> list[int]:
        """Channels of ``encoder_features``: 160, 320, 320, 640, 640 for the real-SR x4 network."""
        return [self.block_channels[i] for i in self.feature_indices] + [self.block_channels[-1]]

    def encoder_features(self, x: Tensor, t: Tensor, lq: Tensor) -> list[Tensor]:
        """The encoder activations at ``feature_indices`` plus the middle block's output; the decoder is skipped."""
        middle, skips, _ = self.encode(x, t, lq)
        return [skips[i] for i in self.feature_indices] + [middle]

    def forward(self, x: Tensor, t: Tensor, lq: Tensor) -> Tensor:
        h, skips, emb = self.encode(x, t, lq)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)
