"""Inference: padding, and the LR -> HR diffusion pipeline."""

from tadsr.inference.pipeline import encode_lr, super_resolve, upsample_lr

__all__ = ["encode_lr", "super_resolve", "upsample_lr"]
