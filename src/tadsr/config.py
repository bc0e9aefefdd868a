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

from tadsr.config_checks import check_ranges, check_type
from tadsr.diffusion.schedule import ScheduleConfig
from tadsr.errors import ConfigError
from tadsr.nets.autoencoder import PixelUnshuffleConfig, VQConfig
from tadsr.nets.unet import UNetConfig

Role = Literal["teacher", "student"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an SR model: networks, schedule, scale and role.

    ``role`` sets the default number of sampling steps: a ``teacher`` samples all T steps, a ``student`` one.
    ``predict_residual``: the network predicts x0 - z_y and the denoiser adds z_y back (c_skip = 1 in
    ``tadsr.diffusion.denoiser``; its last layer starts at zero, so an untrained model returns the bicubic image);
    False for the official networks, which predict x0 itself.
    """

    unet: UNetConfig
    first_stage: VQConfig | PixelUnshuffleConfig
    schedule: ScheduleConfig
    scale: int = 4
    role: Role = "teacher"
    predict_residual: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, "model", {"scale": (1, 16)})
        if self.role not in ("teacher", "student"):
            raise ConfigError(f"role must be 'teacher' or 'student', got {self.role!r}")
        latent_channels = (
            self.first_stage.embed_dim if isinstance(self.first_stage, VQConfig)
            else self.first_stage.channels * self.first_stage.factor**2
        )
        if self.unet.in_channels != latent_channels or self.unet.out_channels != latent_channels:
            raise ConfigError(f"UNet in/out channels ({self.unet.in_channels}/{self.unet.out_channels}) must equal "
                             f"the first stage's latent channels ({latent_channels})")
        if self.first_stage.factor != self.scale * self.unet.lq_factor:
            raise ConfigError(f"first-stage factor {self.first_stage.factor} must equal scale {self.scale} x "
                             f"UNet lq_factor {self.unet.lq_factor} (the LR condition is lq_factor x the latent)")

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


def migrate_model_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A ModelConfig dict of an older release in today's layout.

    Format 1 (tadsr <= 0.1) kept the residual re-parametrisation inside the UNet as ``unet.residual_scale`` (0, or
    the SR scale of a pixel-unshuffle first stage); it is the model-level ``predict_residual`` now.
    """
    unet = data.get("unet")
    if isinstance(unet, dict) and "residual_scale" in unet:
        unet = dict(unet)
        data = {**data, "unet": unet, "predict_residual": bool(unet.pop("residual_scale"))}
    return data


def from_dict(cls: type, data: dict[str, Any], prefix: str = "model") -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys raise, every value is type-checked (``check_type``;
    lists become tuples), nested configs recurse; ``prefix`` names the section in messages (``model.unet``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: needs a mapping of keys, got {data!r}")
    if cls is ModelConfig:
        data = migrate_model_dict(dict(data))
        stage = data.get("first_stage", {})
        stage = dict(stage) if isinstance(stage, dict) else stage
        kind = stage.pop("kind", None) if isinstance(stage, dict) else None
        if kind not in ("vq", "pixel_unshuffle"):
            raise ConfigError(f"{prefix}.first_stage.kind must be 'vq' or 'pixel_unshuffle', got {kind!r}")
        data["first_stage"] = from_dict(VQConfig if kind == "vq" else PixelUnshuffleConfig, stage,
                                        f"{prefix}.first_stage")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) for {cls.__name__}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{prefix}.{name}")
        elif not dataclasses.is_dataclass(value):
            value = check_type(f"{prefix}.{name}", hint, value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # a value of the wrong type or range, from the file or an override
        raise ConfigError(f"{cls.__name__}: {err}") from err


def config_to_json(config: Any) -> str:
    return json.dumps(to_dict(config), sort_keys=True)


def model_config_from_json(text: str) -> ModelConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not a JSON model config ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError("a model config is a JSON object")
    return from_dict(ModelConfig, data)
