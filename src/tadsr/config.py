"""The model config saved in every tadsr model file, and dataclass <-> dict conversion.

``ModelConfig`` ties together what an SR model needs: the denoiser (``UNetConfig``), the first stage (a VQ
autoencoder or the pixel-unshuffle stage), the diffusion schedule and the SR scale. Dicts map onto the frozen
dataclasses strictly: an unknown or missing key is an error, never a silent default.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, Literal

from tadsr.diffusion.schedule import ScheduleConfig
from tadsr.nets.autoencoder import PixelUnshuffleConfig, VQConfig
from tadsr.nets.unet import UNetConfig

Role = Literal["teacher", "student"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an SR model: networks, schedule, scale and role.

    ``role`` sets the default number of sampling steps: a ``teacher`` samples all T steps, a ``student`` one.
    """

    unet: UNetConfig
    first_stage: VQConfig | PixelUnshuffleConfig
    schedule: ScheduleConfig
    scale: int = 4
    role: Role = "teacher"

    def __post_init__(self) -> None:
        if self.role not in ("teacher", "student"):
            raise ValueError(f"role must be 'teacher' or 'student', got {self.role!r}")
        latent_channels = (
            self.first_stage.embed_dim if isinstance(self.first_stage, VQConfig)
            else self.first_stage.channels * self.first_stage.factor**2
        )
        if self.unet.in_channels != latent_channels or self.unet.out_channels != latent_channels:
            raise ValueError(f"UNet in/out channels ({self.unet.in_channels}/{self.unet.out_channels}) must equal "
                             f"the first stage's latent channels ({latent_channels})")
        if self.first_stage.factor != self.scale * self.unet.lq_factor:
            raise ValueError(f"first-stage factor {self.first_stage.factor} must equal scale {self.scale} x "
                             f"UNet lq_factor {self.unet.lq_factor} (the LR condition is lq_factor x the latent)")
        if self.unet.residual_scale and (not isinstance(self.first_stage, PixelUnshuffleConfig)
                                         or self.unet.residual_scale != self.scale):
            raise ValueError(f"UNet residual_scale {self.unet.residual_scale} needs a pixel-unshuffle first stage "
                             f"and must equal the scale ({self.scale})")

    @property
    def lr_multiple(self) -> int:
        """LR height and width must be multiples of this (the pipeline reflect-pads to it)."""
        return self.unet.size_multiple * self.unet.lq_factor


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON-able dict; the first stage carries a ``kind`` tag."""
    out = dataclasses.asdict(config)
    if isinstance(config, ModelConfig):
        out["first_stage"]["kind"] = "vq" if isinstance(config.first_stage, VQConfig) else "pixel_unshuffle"
    return out


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys raise, lists become tuples, nested configs recurse."""
    if cls is ModelConfig:
        data = dict(data)
        stage = dict(data.get("first_stage", {}))
        kind = stage.pop("kind", None)
        if kind not in ("vq", "pixel_unshuffle"):
            raise ValueError(f"first_stage.kind must be 'vq' or 'pixel_unshuffle', got {kind!r}")
        data["first_stage"] = from_dict(VQConfig if kind == "vq" else PixelUnshuffleConfig, stage)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown key(s) for {cls.__name__}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def config_to_json(config: Any) -> str:
    return json.dumps(to_dict(config), sort_keys=True)


def model_config_from_json(text: str) -> ModelConfig:
    return from_dict(ModelConfig, json.loads(text))
