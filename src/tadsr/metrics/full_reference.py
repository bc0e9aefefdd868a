"""Full-reference metrics on (N, C, H, W) tensors in [0, data_range]: PSNR and SSIM (Wang et al. 2004).

Conventions, explicit because reproduction questions mostly come from them (docs/implementation-notes.md §6):

* ``rgb_to_y``: ITU-R BT.601 luma of the 'ycbcr' colour space, Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255
  for RGB in [0, 1] (pyiqa's ``test_y_channel=True, color_space='ycbcr'``, BasicSR's ``test_y_channel``); float,
  not re-quantised to 8 bits;
* ``crop_border`` pixels are dropped on each side before measuring (0 as in the SinSR/TAD-SR evaluation; 4 is the
  BasicSR convention for x4);
* SSIM: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, the mean over the valid region and the channels
  (the same numbers as scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tadsr.bt601 import YCBCR_Y


def rgb_to_y(x: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) BT.601 'ycbcr' luma in [16/255, 235/255]."""
    w = torch.tensor(YCBCR_Y, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x * w).sum(1, keepdim=True) + 16.0) / 255.0


def prepare(a: Tensor, b: Tensor, y_channel: bool = False, crop_border: int = 0) -> tuple[Tensor, Tensor]:
    """Crop ``crop_border`` on each side and convert to Y when asked; float64."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.double(), b.double()
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    if y_channel and a.shape[1] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB, (N,); infinite for identical images."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM, (N,): 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, valid region, channel mean."""
    a, b = a.double(), b.double()
    c = a.shape[1]
    w = _gaussian_window().to(a.device).expand(c, 1, 11, 11)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, w, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
