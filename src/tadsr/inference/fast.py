"""Optional inference speed-ups that do not change results beyond floating-point rounding.

The always-on parts of the fast path live where they act: SDPA attention in the Swin windows and the VQ mid-block
(``nets.swin``, ``nets.autoencoder``), shift masks cached per feature size, ``torch.inference_mode``, the encoder's
bicubic and padding on the model's device (``inference.pipeline``), autocast, and tile batching
(``inference.tiling``). This module adds the two that are opt-in:

* ``channels_last``: weights (and so activations) in NHWC memory format, which oneDNN and cuDNN convolutions
  prefer; outputs equal the NCHW path's within fp32 rounding (tests check 1e-4).
* ``compile``: ``torch.compile`` of the UNet and of the first stage's encode and decode. The first call at a new
  input size compiles (seconds to minutes); later calls at that size run the compiled graphs.
"""

from __future__ import annotations

import torch

from tadsr.model import SRModel


def prepare_for_inference(model: SRModel, channels_last: bool = False, compile: bool = False) -> SRModel:
    """Put ``model`` in eval mode and apply the opt-in speed-ups in place; returns the model."""
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.unet = torch.compile(model.unet)  # type: ignore[assignment]
        stage = model.first_stage
        stage.encode = torch.compile(stage.encode)  # type: ignore[method-assign]
        stage.decode = torch.compile(stage.decode)  # type: ignore[method-assign]
    return model
