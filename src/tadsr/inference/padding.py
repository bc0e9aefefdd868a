"""Padding an image to the size multiple a model needs, and cropping back."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``: the size the model runs for ``n`` pixels."""
    return -(-n // multiple) * multiple


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Reflect-pad (N, C, H, W) on the bottom and right to multiples of ``multiple``; returns (padded, (H, W)).

    Pads larger than the image are done by repeated reflection (like numpy's ``reflect``); a 1-pixel side is
    replicated, since it has nothing to reflect.
    """
    h, w = x.shape[-2:]
    target_h, target_w = round_up(h, multiple), round_up(w, multiple)
    while x.shape[-2] < target_h or x.shape[-1] < target_w:
        cur_h, cur_w = x.shape[-2:]
        pad_h = min(target_h - cur_h, cur_h - 1)
        pad_w = min(target_w - cur_w, cur_w - 1)
        if pad_h == 0 and pad_w == 0:  # 1-pixel side(s): nothing to reflect
            x = F.pad(x, (0, target_w - cur_w, 0, target_h - cur_h), mode="replicate")
            break
        x = F.pad(x, (0, max(pad_w, 0), 0, max(pad_h, 0)), mode="reflect")
    return x, (h, w)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop (N, C, H, W) to its top-left (h, w)."""
    return x[..., : size[0], : size[1]]
