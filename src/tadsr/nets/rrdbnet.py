"""Real-ESRGAN x4plus (RRDBNet, Wang et al. 2021), the GAN baseline of the paper's tables.

Key names follow BasicSR's ``RRDBNet`` (``conv_first``, ``body.{i}.rdb{1,2,3}.conv{1..5}``, ``conv_body``,
``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``), the layout of ``RealESRGAN_x4plus.pth`` (``params_ema``).
Images are RGB in [0, 1]. 16,697,987 parameters with the defaults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense connections; LeakyReLU(0.2) after the first four; residual scaled by 0.2."""

    def __init__(self, channels: int = 64, growth: int = 32) -> None:
        super().__init__()
        for i in range(5):
            cout = channels if i == 4 else growth
            setattr(self, f"conv{i + 1}", nn.Conv2d(channels + i * growth, cout, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for i in range(1, 5):
            feats.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, channels: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels, growth)
        self.rdb2 = ResidualDenseBlock(channels, growth)
        self.rdb3 = ResidualDenseBlock(channels, growth)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """x4 RRDBNet: conv -> 23 RRDBs -> conv (+ skip) -> 2 x (nearest x2, conv, LReLU) -> conv, LReLU -> conv."""

    def __init__(self, channels: int = 64, blocks: int = 23, growth: int = 32) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(channels, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_up1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_up2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_hr = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    def convolutions(self) -> list[nn.Conv2d]:
        """The 351 convolutions in execution order (the order of the ncnn model's Convolution layers)."""
        convs = [self.conv_first]
        for block in self.body:
            for rdb in (block.rdb1, block.rdb2, block.rdb3):
                convs += [getattr(rdb, f"conv{i}") for i in range(1, 6)]
        return convs + [self.conv_body, self.conv_up1, self.conv_up2, self.conv_hr, self.conv_last]
