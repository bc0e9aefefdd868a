"""Colour correction of an SR output against its LR input (StableSR-style 'wavelet' and 'adain' fixes).

Both take ``content`` (the SR output) and ``style`` (the bicubic-upsampled LR, same size), (N, 3, H, W), any range.
Diffusion SR can drift in global colour; these restore the LR's low frequencies (wavelet) or channel statistics
(AdaIN) while keeping the generated detail.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tadsr.errors import ConfigError

ColorFix = Literal["none", "wavelet", "adain"]
COLOR_FIXES = ("none", "wavelet", "adain")


def adain_color_fix(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """Give each channel of ``content`` the mean and standard deviation of ``style`` (AdaIN, Huang & Belongie 2017)."""
    c_mean, c_std = content.mean((2, 3), keepdim=True), content.std((2, 3), keepdim=True)
    s_mean, s_std = style.mean((2, 3), keepdim=True), style.std((2, 3), keepdim=True)
    return (content - c_mean) / (c_std + eps) * s_std + s_mean


def wavelet_blur(x: Tensor, dilation: int) -> Tensor:
    """3x3 binomial ([1, 2, 1] outer [1, 2, 1] / 16) blur with the given dilation and replicate padding."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (dilation,) * 4, mode="replicate"), kernel, dilation=dilation, groups=x.shape[1])


def wavelet_decompose(x: Tensor, levels: int = 5) -> tuple[Tensor, Tensor]:
    """(high, low) with x = high + low: an a-trous decomposition with dilations 1, 2, 4, ..."""
    low = x
    for i in range(levels):
        low = wavelet_blur(low, 2**i)
    return x - low, low


def wavelet_color_fix(content: Tensor, style: Tensor, levels: int = 5) -> Tensor:
    """High frequencies of ``content`` plus low frequencies of ``style``."""
    return wavelet_decompose(content, levels)[0] + wavelet_decompose(style, levels)[1]


def color_fix(content: Tensor, style: Tensor, method: ColorFix) -> Tensor:
    if method == "none":
        return content
    if method == "wavelet":
        return wavelet_color_fix(content, style)
    if method == "adain":
        return adain_color_fix(content, style)
    raise ConfigError(f"unknown colour fix {method!r}; choose from {', '.join(COLOR_FIXES)}")
