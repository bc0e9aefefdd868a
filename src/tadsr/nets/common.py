"""Layers shared by the Swin-UNet, the autoencoders and the discriminator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (autocast-safe), cast back to the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int, eps: float = 1e-5) -> GroupNorm32:
    """The 32-group GroupNorm the ResShift UNet and Swin layers use everywhere ("GN32")."""
    return GroupNorm32(32, channels, eps=eps)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps, (N,) -> (N, dim) float32: **cos first, then sin**.

    Frequencies exp(-ln(max_period) i / half), i = 0..half-1 (guided-diffusion / ResShift convention;
    docs/implementation-notes.md §3.1). The raw index is embedded: no x1000 rescale.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` and return it (zero-initialised output convs)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def upsample_lr(lr: Tensor, scale: int) -> Tensor:
    """Bicubic x scale with ``F.interpolate`` (align_corners False, no antialias), as ResShift
    (docs/implementation-notes.md §1.5).

    The one definition of the LR upsampling: z_y (the pipeline, the trainers), the bicubic baseline, colour fixes
    and the validation sheets share it.
    """
    if scale == 1:
        return lr
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv (key ``conv``): the upsampler of both the UNet and the VQ decoder."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Conv1x1(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (same parameters, same state-dict keys) computed as one matrix product.

    On CPU, PyTorch sends fp32 1x1 convolutions to its slow im2col path (``_slow_conv2d_forward``, 16% of the real-SR
    x4 UNet's time); a batched GEMM gives the same sums in about half the time. NHWC (channels_last) inputs use
    ``F.linear`` on the channel-last view, with no copy. (N, C_in, H, W) -> (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        weight = self.weight.view(self.out_channels, self.in_channels)
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return F.linear(x.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        if self.bias is None:
            out = torch.matmul(weight, flat)
        else:
            out = torch.baddbmm(self.bias.view(1, -1, 1), weight.expand(n, -1, -1), flat)
        return out.view(n, self.out_channels, h, w)
