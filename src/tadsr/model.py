"""``SRModel``: a denoiser network, its first stage and its schedule, saved to and loaded from one safetensors file;
the factories that build them (from a config, or from official weights)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tadsr.checkpoints import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    atomic_save_file,
    check_fits,
    export_tensors,
    load_state_dict_strict,
    read_metadata,
    read_shapes,
    read_state_dict,
)
from tadsr.config import ModelConfig, config_to_json, model_config_from_json
from tadsr.diffusion.denoiser import ResShiftDenoiser
from tadsr.diffusion.schedule import Schedule
from tadsr.errors import NotFoundError
from tadsr.nets.autoencoder import PixelUnshuffleConfig, PixelUnshuffleStage, VQAutoencoder, VQConfig
from tadsr.nets.common import zero_module
from tadsr.nets.unet import SwinUNet


def build_first_stage(config: VQConfig | PixelUnshuffleConfig) -> VQAutoencoder | PixelUnshuffleStage:
    if isinstance(config, VQConfig):
        return VQAutoencoder(config)
    if isinstance(config, PixelUnshuffleConfig):
        return PixelUnshuffleStage(config)
    raise TypeError(f"unknown first-stage config {type(config).__name__}")


def build_network(config: ModelConfig) -> SwinUNet:
    """The denoiser network of ``config``; for ``predict_residual`` its last conv starts at zero, so that the
    untrained denoiser returns z_y (the bicubic image)."""
    net = SwinUNet(config.unet)
    if config.predict_residual:
        zero_module(net.out[-1])
    return net


def has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def load_first_stage(config: ModelConfig, weights: str | os.PathLike | None) -> VQAutoencoder | PixelUnshuffleStage:
    """The first stage of ``config`` with its official weights (a VQ autoencoder needs them; the pixel-unshuffle
    stage has none to load). CheckpointError names the problem."""
    stage = build_first_stage(config.first_stage)
    if has_weights(stage) and weights is None:
        raise CheckpointError("this model's first stage is a VQ autoencoder: pass its weights (e.g. "
                              "autoencoder_vq_f4.pth)")
    if not has_weights(stage) and weights is not None:
        raise CheckpointError(f"{weights}: this model's first stage (pixel-unshuffle) has no weights to load")
    if weights is not None:
        stage = built_to_fit(lambda: build_first_stage(config.first_stage), weights)
    return stage


def built_to_fit(build: Callable[[], nn.Module], weights: str | os.PathLike) -> nn.Module:
    """``build()`` with the official file ``weights`` loaded strictly (``checkpoints.load_official``), its shapes
    checked on the meta device first: a config whose network does not fit the file is refused before its memory
    is allocated (and the file is memory-mapped where its format allows)."""
    state = read_state_dict(weights)
    with torch.device("meta"):
        check_fits(build(), {k: tuple(v.shape) for k, v in state.items()}, weights)
    module = build()
    load_state_dict_strict(module, state, weights)
    return module


def denoiser(net: nn.Module, config: ModelConfig, schedule: Schedule) -> ResShiftDenoiser:
    """The preconditioned denoiser of ``config`` around ``net`` (a model's own network, a student, a DDP wrapper)."""
    return ResShiftDenoiser(net, schedule, residual=config.predict_residual)


class SRModel(nn.Module):
    """The parts of a diffusion SR model: ``unet`` (the network), ``first_stage`` (encoder/decoder), ``schedule``;
    ``denoiser`` is the preconditioned x0 predictor the samplers call."""

    def __init__(self, config: ModelConfig, unet: SwinUNet | None = None,
                 first_stage: VQAutoencoder | PixelUnshuffleStage | None = None) -> None:
        """Built from ``config``, or around existing ``unet`` / ``first_stage`` modules (shared, not copied)."""
        super().__init__()
        self.config = config
        self.unet = unet if unet is not None else build_network(config)
        self.first_stage = first_stage if first_stage is not None else build_first_stage(config.first_stage)
        self.schedule = Schedule(config.schedule)

    @property
    def denoiser(self) -> ResShiftDenoiser:
        return denoiser(self.unet, self.config, self.schedule)


def model_from_official(config: ModelConfig, unet_weights: str | os.PathLike,
                        first_stage_weights: str | os.PathLike | None) -> SRModel:
    """An SRModel of ``config`` with official ResShift / SinSR weights (any official form, strict)."""
    unet = built_to_fit(lambda: build_network(config), unet_weights)
    return SRModel(config, unet=unet, first_stage=load_first_stage(config, first_stage_weights))


def save_model(model: SRModel, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write ``model`` as one safetensors file (atomically), its ModelConfig as JSON in the metadata.

    ``dtype`` (e.g. torch.float16) casts floating tensors for storage; derived buffers are not stored.
    """
    tensors = export_tensors(model.unet, "unet.", dtype) | export_tensors(model.first_stage, "first_stage.", dtype)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config_to_json(model.config)}
    atomic_save_file(tensors, path, meta)


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    """The checked ModelConfig in a tadsr model file's metadata (no tensor is read)."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        return model_config_from_json(meta["config"])
    except (ValueError, TypeError, KeyError) as err:  # ConfigError names the key, the value, what is allowed
        raise CheckpointError(f"{path}: invalid model config in its metadata ({err})") from err


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> SRModel:
    """Rebuild an SRModel from a file written by ``save_model`` (strict), in eval mode on ``device``/``dtype``."""
    path = Path(path)
    config = read_model_config(path)
    with torch.device("meta"):  # the shapes the config implies, checked against the header before allocating
        check_fits(SRModel(config), read_shapes(path), path)
    model = SRModel(config)
    state = read_state_dict(path)
    load_state_dict_strict(model, state, path)
    return model.to(device=device, dtype=dtype).eval()


EMBEDDED_NAMES = ("student", "teacher")


class ModelNotFoundError(NotFoundError):
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
