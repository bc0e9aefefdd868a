"""LPIPS (Zhang et al. 2018, v0.1): a learned perceptual distance on AlexNet or VGG-16 features.

d(x, y) = sum over layers l of mean over positions of w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2, with f_l the
ReLU outputs of the backbone (AlexNet: relu1-5; VGG-16: relu1_2, 2_2, 3_3, 4_3, 5_3), unit-normalised along
channels, and w_l >= 0 the learned linear heads. Inputs are RGB in [-1, 1], shifted and scaled by the lpips
constants first. Weights come from files users have: the torchvision ImageNet backbone (``alexnet-owt-*.pth`` /
``vgg16-*.pth``, keys ``features.N.*``) and the lpips heads (``lpips/weights/v0.1/{alex,vgg}.pth``, keys
``lin{k}.model.1.weight``); none ship with tadsr.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from tadsr.checkpoints import CheckpointError, read_state_dict
from tadsr.errors import ConfigError

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
MIN_SIDE = {"alex": 31, "vgg": 16}  # the least height and width whose deepest tapped layer still has a pixel


def _alexnet_features() -> tuple[nn.Sequential, list[int], list[int]]:
    layers = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )
    return layers, [1, 4, 7, 9, 11], [64, 192, 384, 256, 256]


def _vgg16_features() -> tuple[nn.Sequential, list[int], list[int]]:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
            cin = int(v)
    return nn.Sequential(*layers), [3, 8, 15, 22, 29], [64, 128, 256, 512, 512]


class _Head(nn.Module):
    """Dropout then a bias-free 1x1 conv: keys ``model.1.weight`` like the lpips heads."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """``LPIPS(net)(x, y)`` -> (N,) distances; call ``load_backbone`` and ``load_heads`` with real weights first."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in ("alex", "vgg"):
            raise ConfigError(f"net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        self.features, self.taps, channels = _alexnet_features() if net == "alex" else _vgg16_features()
        for k, c in enumerate(channels):
            setattr(self, f"lin{k}", _Head(c))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def load_backbone(self, path: str | os.PathLike) -> LPIPS:
        """torchvision ImageNet weights (``features.*``; the classifier is ignored)."""
        state = {k[len("features."):]: v for k, v in read_state_dict(path).items() if k.startswith("features.")}
        if not state:
            raise CheckpointError(f"{path}: no 'features.*' tensors: not a torchvision {self.net} backbone")
        from tadsr.checkpoints import load_state_dict_strict

        load_state_dict_strict(self.features, state, path)
        return self

    def load_heads(self, path: str | os.PathLike) -> LPIPS:
        """The lpips package's linear heads (``lin{k}.model.1.weight``)."""
        from tadsr.checkpoints import load_state_dict_strict

        heads = nn.ModuleDict({f"lin{k}": getattr(self, f"lin{k}") for k in range(len(self.taps))})
        load_state_dict_strict(heads, read_state_dict(path), path)
        return self

    def _feats(self, x: Tensor) -> list[Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if i == self.taps[-1]:
                break
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if min(x.shape[-2:]) < MIN_SIDE[self.net]:
            side = MIN_SIDE[self.net]
            raise ValueError(f"LPIPS ({self.net}) needs {side}x{side} pixels or more, got {x.shape[-1]}x{x.shape[-2]}")
        total = 0
        for k, (fx, fy) in enumerate(zip(self._feats(x), self._feats(y), strict=True)):
            total = total + getattr(self, f"lin{k}").model((fx - fy) ** 2).mean((2, 3))
        return total.flatten()
