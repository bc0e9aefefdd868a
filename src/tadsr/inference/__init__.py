"""Inference: the LR -> HR diffusion pipeline (``pipeline``), the ``Backend`` the tiler runs and the tadsr model
behind it (``backend``; an exported graph: ``onnx``), tiling with one noise draw per image (``tiling``), the
``Upscaler`` of images with their colour, alpha and bit depth (``upscaler``), batches of files with their guarantees
(``batch``), padding, colour fixes and the opt-in speed-ups (``fast``). Opening a model by its path:
``tadsr.backends.open_model``."""

from tadsr.inference.pipeline import encode_lr, super_resolve, upsample_lr

__all__ = ["encode_lr", "super_resolve", "upsample_lr"]
