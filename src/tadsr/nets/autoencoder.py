"""First stages: the VQ autoencoder of ResShift (LDM VQ-f4 / VQ-f8 face) and a lossless pixel-unshuffle stage.

Both expose ``encode(img) -> z`` and ``decode(z) -> img`` with images (N, 3, H, W) in [-1, 1] and latents
(N, latent_channels, H / factor, W / factor). The VQ model encodes *without* quantisation and quantises at decode
(docs/implementation-notes.md §1.5, §3.2). Module names follow the official ``VQModelTorch`` checkpoints
(205 keys for VQ-f4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tadsr.config_checks import check_ranges
from tadsr.errors import ConfigError
from tadsr.nets.common import Conv1x1, GroupNorm32, Upsample


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels, eps=1e-6)


@dataclass(frozen=True)
class VQConfig:
    """VQ autoencoder hyper-parameters; defaults are ``autoencoder_vq_f4.pth`` (55,322,782 parameters).

    ``num_res_blocks`` has one entry per level (the face VQ-f8 uses (1, 2, 3, 4)); ``attn_resolutions`` lists the
    feature sizes (for a ``resolution`` input) with attention inside the levels; the middle block always has one.
    """

    embed_dim: int = 3
    n_embed: int = 8192
    z_channels: int = 3
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2)
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self, "model.first_stage", {
            "embed_dim": (1, 64), "n_embed": (1, 65536), "z_channels": (1, 64), "resolution": (8, 16384),
            "in_channels": (1, 16), "out_ch": (1, 16), "ch": (32, 1024), "ch_mult": (1, 16), "num_res_blocks": (1, 16),
            "attn_resolutions": (1, 16384), "dropout": (0, 1)})
        if not 1 <= len(self.ch_mult) <= 8:
            raise ConfigError(f"model.first_stage.ch_mult = {self.ch_mult!r}: needs 1 to 8 levels")
        if len(self.num_res_blocks) != len(self.ch_mult):
            raise ConfigError("num_res_blocks needs one entry per ch_mult level")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv -> GN -> SiLU -> dropout -> conv, plus a 1x1 ``nin_shortcut`` when channels change."""

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = Conv1x1(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q, k, v, proj_out, through SDPA (scale C^-0.5).

    Computed in float32 under autocast, as its GroupNorm: one softmax over every pixel of the feature map, the
    usual upcast of an autoencoder's attention (no cost measurable at the middle block's size; its effect on the
    bf16 picture is measured in docs/benchmarks.md)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = Conv1x1(channels, channels)
        self.k = Conv1x1(channels, channels)
        self.v = Conv1x1(channels, channels)
        self.proj_out = Conv1x1(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        work = self.q.weight.dtype  # float32 unless the weights themselves were cast down
        with torch.autocast(x.device.type, enabled=False):
            y = self.norm(x.to(work))
            q, k, v = (m(y).reshape(n, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))  # (N,1,HW,C)
            out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(n, c, h, w)
            return (x.to(work) + self.proj_out(out)).to(x.dtype)


class Downsample(nn.Module):
    """Asymmetric zero pad (0, 1, 0, 1) then stride-2 3x3 conv (LDM convention)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (AttnBlocks, maybe empty), optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample is not None:
            self.add_module(name, resample)
        self._resample_name = name if resample is not None else None

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return getattr(self, self._resample_name)(x) if self._resample_name else x


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        res, cin = cfg.resolution, cfg.ch
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            cout = cfg.ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks[i]):
                blocks.append(ResnetBlock(cin, cout, cfg.dropout))
                cin = cout
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(cin))
            last = i == len(cfg.ch_mult) - 1
            self.down.append(_Level(blocks, attns, None if last else Downsample(cin), "downsample"))
            res = res if last else res // 2
        self.mid = _Mid(cin, cfg.dropout)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        cin = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.factor
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin, cfg.dropout)
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.ch_mult))):
            cout = cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks[i] + 1):
                blocks.append(ResnetBlock(cin, cout, cfg.dropout))
                cin = cout
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(cin))
            levels.insert(0, _Level(blocks, attns, Upsample(cin) if i else None, "upsample"))
            res = res * 2 if i else res
        self.up = nn.ModuleList(levels)  # indexed by level, run from the deepest
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser (L2), with a straight-through gradient; codebook key ``embedding.weight``."""

    def __init__(self, n_embed: int, embed_dim: int, chunk: int = 16384) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)
        self.chunk = chunk

    def indices(self, z: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, H, W) int64 index of the nearest code; distances in float32, in chunks of pixels."""
        n, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c).float()
        book = self.embedding.weight.float()
        book_sq = (book**2).sum(1)
        # chunks bound the (pixels x codes) distance matrix; a traced graph (ONNX export) takes every pixel at once:
        # a number of chunks traced at one size would be baked into a graph run at every size
        parts = [flat] if torch.compiler.is_exporting() else flat.split(self.chunk)
        out = []
        for part in parts:
            # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e, the expansion the LDM quantiser uses (same ties)
            dist = (part**2).sum(1, keepdim=True) + book_sq - 2 * part @ book.t()
            out.append(dist.argmin(1))
        return torch.cat(out).view(n, h, w)

    def forward(self, z: Tensor) -> Tensor:
        z_q = self.embedding(self.indices(z)).permute(0, 3, 1, 2).to(z.dtype)
        return z + (z_q - z).detach()


class VQAutoencoder(nn.Module):
    """LDM-style VQ autoencoder (official ``VQModelTorch``): encode without, decode with quantisation."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = Conv1x1(config.z_channels, config.embed_dim)
        self.post_quant_conv = Conv1x1(config.embed_dim, config.z_channels)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def latent_channels(self) -> int:
        return self.config.embed_dim

    def encode(self, img: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, embed_dim, H / f, W / f), not quantised; H, W multiples of f."""
        return self.quant_conv(self.encoder(img))

    def decode(self, z: Tensor, quantize: bool = True) -> Tensor:
        """(N, embed_dim, h, w) -> (N, 3, h f, w f), nominally [-1, 1] (not clamped); quantises first."""
        if quantize:
            z = self.quantize(z)
        return self.decoder(self.post_quant_conv(z))


@dataclass(frozen=True)
class PixelUnshuffleConfig:
    """The training-free, lossless first stage: space-to-depth by ``factor`` (3 f^2 latent channels)."""

    factor: int = 4
    channels: int = 3

    def __post_init__(self) -> None:
        check_ranges(self, "model.first_stage", {"factor": (1, 16), "channels": (1, 16)})


class PixelUnshuffleStage(nn.Module):
    """encode = pixel_unshuffle(img, f), decode = pixel_shuffle(z, f): exact inverses, no weights."""

    def __init__(self, config: PixelUnshuffleConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def latent_channels(self) -> int:
        return self.config.channels * self.config.factor**2

    def encode(self, img: Tensor) -> Tensor:
        return F.pixel_unshuffle(img, self.config.factor)

    def decode(self, z: Tensor) -> Tensor:
        return F.pixel_shuffle(z, self.config.factor)


FirstStage = VQAutoencoder | PixelUnshuffleStage
