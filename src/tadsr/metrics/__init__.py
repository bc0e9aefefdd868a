"""Image quality metrics."""

from tadsr.metrics.full_reference import psnr, ssim

__all__ = ["psnr", "ssim"]
