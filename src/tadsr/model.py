"""``SRModel``: a denoiser, its first stage and its schedule, saved to and loaded from one safetensors file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tadsr.checkpoints import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    atomic_save_file,
    export_tensors,
    load_state_dict_strict,
    read_metadata,
    read_state_dict,
)
from tadsr.config import ModelConfig, config_to_json, model_config_from_json
from tadsr.diffusion.schedule import Schedule
from tadsr.nets.autoencoder import PixelUnshuffleConfig, PixelUnshuffleStage, VQAutoencoder, VQConfig
from tadsr.nets.unet import SwinUNet


def build_first_stage(config: VQConfig | PixelUnshuffleConfig) -> VQAutoencoder | PixelUnshuffleStage:
    if isinstance(config, VQConfig):
        return VQAutoencoder(config)
    if isinstance(config, PixelUnshuffleConfig):
        return PixelUnshuffleStage(config)
    raise TypeError(f"unknown first-stage config {type(config).__name__}")


class SRModel(nn.Module):
    """The parts of a diffusion SR model: ``unet`` (denoiser), ``first_stage`` (encoder/decoder), ``schedule``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = SwinUNet(config.unet)
        self.first_stage = build_first_stage(config.first_stage)
        self.schedule = Schedule(config.schedule)


def save_model(model: SRModel, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write ``model`` as one safetensors file (atomically), its ModelConfig as JSON in the metadata.

    ``dtype`` (e.g. torch.float16) casts floating tensors for storage; derived buffers are not stored.
    """
    tensors = export_tensors(model.unet, "unet.", dtype) | export_tensors(model.first_stage, "first_stage.", dtype)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config_to_json(model.config)}
    atomic_save_file(tensors, path, meta)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> SRModel:
    """Rebuild an SRModel from a file written by ``save_model`` (strict), in eval mode on ``device``/``dtype``."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        config = model_config_from_json(meta["config"])
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: invalid model config in metadata ({err})") from err
    model = SRModel(config)
    state = read_state_dict(path)
    load_state_dict_strict(model, state, path)
    return model.to(device=device, dtype=dtype).eval()


EMBEDDED_NAMES = ("student", "teacher")


class ModelNotFoundError(FileNotFoundError):
    """No model file at the given path, or no embedded model of that name in this install."""


def resolve_model_path(name_or_path: str | os.PathLike | None) -> Path:
    """A model file path from a path, or from an embedded name (``"student"`` — the default — or ``"teacher"``)."""
    if name_or_path is None or str(name_or_path) in EMBEDDED_NAMES:
        from importlib.resources import files

        name = str(name_or_path or "student")
        path = Path(str(files("tadsr") / "weights" / f"{name}.safetensors"))
        if not path.is_file():
            raise ModelNotFoundError(f"no embedded {name} model in this install: pass --model with a .safetensors "
                                     "file made by `tadsr convert`")
        return path
    path = Path(name_or_path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such model file")
    return path
