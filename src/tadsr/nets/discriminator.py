"""The time-aware latent discriminator of TAD-SR (paper §IV-B, Eq. 9-10; docs/implementation-notes.md §4.5).

Features come from the frozen teacher UNet's encoder (``SwinUNet.encoder_features``) on a noised latent at a
timestep t; this module holds only the trainable heads. Per feature scale k:

    h_k = GN(F_k) (1 + gamma_k(t)) + beta_k(t)          time modulation (plain: h_k = GN(F_k))
    h_k = zero-init conv3x3(SiLU(h_k))                   (B, C_k, H_k, W_k)
    logits_k = DiscHead(flatten(h_k))                    (B, 64 * H_k * W_k)

with (gamma, beta) = Linear(SiLU(sinusoid(t))) and DiscHead = spectral-norm Conv1d k=1 -> GN(4) -> LeakyReLU(0.2),
a residual block of the same with k=9, /sqrt(2), then a spectral-norm Conv1d to ``c_dim`` logits per position.
The output is every head's logits of a sample concatenated, (B, L) float32; the hinge losses
(``tadsr.losses.adversarial``) reduce them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from tadsr.nets.common import GroupNorm32, timestep_embedding, zero_module


def _sn_block(channels: int, kernel: int) -> nn.Sequential:
    conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, padding_mode="circular")
    return nn.Sequential(spectral_norm(conv, eps=1e-12), nn.GroupNorm(4, channels), nn.LeakyReLU(0.2))


class DiscHead(nn.Module):
    """(B, C, L) -> (B, c_dim, L) logits."""

    def __init__(self, channels: int, c_dim: int) -> None:
        super().__init__()
        self.block = _sn_block(channels, 1)
        self.residual = _sn_block(channels, 9)
        self.cls = spectral_norm(nn.Conv1d(channels, c_dim, 1), eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block(x)
        x = (x + self.residual(x)) / math.sqrt(2)
        return self.cls(x)


class ScaleHead(nn.Module):
    """Time modulation, zero-init conv and DiscHead for one feature scale."""

    def __init__(self, channels: int, embed_dim: int, c_dim: int, time_aware: bool) -> None:
        super().__init__()
        self.time_aware = time_aware
        if time_aware:
            self.emb = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * channels))
        # GN32 (gcd(32, C) groups where C is not a multiple of 32: a tiny test network's 8 channels)
        self.norm = GroupNorm32(math.gcd(32, channels), channels)
        self.conv = zero_module(nn.Conv2d(channels, channels, 3, padding=1))
        self.head = DiscHead(channels, c_dim)

    def forward(self, feature: Tensor, t_emb: Tensor) -> Tensor:
        h = self.norm(feature)
        if self.time_aware:
            gamma, beta = self.emb(t_emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
            h = h * (1 + gamma) + beta
        h = self.conv(F.silu(h))
        return self.head(h.flatten(2)).flatten(1)  # (B, c_dim * H * W)


class LatentDiscriminator(nn.Module):
    """Heads on the teacher encoder's features; ``time_aware=False`` gives the ablation's plain discriminator.

    ``forward(features, t)`` -> (B, L) logits per sample (every head's, concatenated), features as
    ``SwinUNet.encoder_features`` returns them.
    """

    def __init__(self, feature_channels: list[int], embed_dim: int, c_dim: int = 64, time_aware: bool = True) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.heads = nn.ModuleList(ScaleHead(c, embed_dim, c_dim, time_aware) for c in feature_channels)

    def forward(self, features: list[Tensor], t: Tensor) -> Tensor:
        t_emb = timestep_embedding(t, self.embed_dim)
        logits = torch.cat([head(f, t_emb) for head, f in zip(self.heads, features, strict=True)], dim=1)
        return logits.float()
