"""``Backend``: what the tiler and ``Upscaler`` need of a super-resolution network, and ``ModelBackend``, a tadsr
``SRModel`` behind it.

A backend turns LR tiles and their slices of one noise draw per image into HR tiles. The tiler
(``tadsr.inference.tiling``) reads its geometry (``scale``, ``size_multiple``, ``noise_factor``), draws the padded
image's noise once from the seed (``draw_noise``) and hands each tile its slice (``run``), so that a pixel gets the
same noise whatever the tiling. The backends: ``ModelBackend`` (here), an exported ONNX graph
(``tadsr.inference.onnx.OnnxModel``), the one-step student of an SD-based teacher (``tadsr.sd.student.SDStudent``)
and a diffusers pipeline (``tadsr.sd.diffusers_teacher.DiffusersBackend``); ``tadsr.backends.open_model`` opens any
of them from a path. They need not import this module: the Protocol is structural.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
from torch import Tensor

from tadsr.config import ModelConfig
from tadsr.devices import cpu_bf16_native, resolve_device
from tadsr.diffusion.samplers import SAMPLERS, SamplerName
from tadsr.errors import ConfigError
from tadsr.inference.fast import prepare_for_inference
from tadsr.inference.pipeline import resolve_steps, super_resolve
from tadsr.model import SRModel


class Backend(Protocol):
    """A network the tiler runs. Optionally also ``fixed_tile`` (int, 0 = any size) and ``fixed_seed``: a backend
    that runs only ``fixed_tile`` x ``fixed_tile`` inputs with its own noise (an ONNX file exported with
    ``--tile N``); ``Upscaler`` then feeds it tiles of exactly that size, refuses another seed and says how a
    tile or overlap asked for runs. Optionally ``begin_image(lr)``: called by ``tiled_super_resolve`` once per
    image, before any ``run``, with the whole LR image (1, 3, h, w) in [-1, 1], unpadded, on the tiler's input
    device; for a backend whose tiles share what it computes from the whole image (SeeSR's tags, DAPE embeddings
    and prompt: ``tadsr.seesr.pipeline.SeeSRBackend``). Its ``run`` calls until the next ``begin_image`` are that
    image's tiles. Optionally ``run_tiled(lr, noise, *, tile, overlap, batch_size, progress)``: a backend that tiles
    itself (SeeSR's per-step latent tiling: every step's ε per latent tile, one step on the whole latent). Whenever
    a tile is asked (``tile`` > 0) ``tiled_super_resolve`` then hands it the whole padded image (1, 3, h, w), its
    whole noise (``draw_noise``'s, never sliced, so its spatial size is the backend's own), ``tile`` and
    ``overlap`` in LR pixels, ``batch_size`` and ``progress(done, total)`` (which it calls itself), instead of
    cutting pixel tiles; it returns the whole HR image, checked as ``run``'s. With tile 0 it is ``run`` as usual.

    A backend's failures are ``tadsr.errors.BackendError`` (one line; a foreign runtime's exception is mapped to it
    where the runtime is called), and what ``run`` returns is checked by the tiler (``tiling.checked_run``): a
    tensor of the shape below, finite, else a BackendError, so that a batch names the image and goes on."""

    @property
    def scale(self) -> int:
        """HR pixels per LR pixel, on each side."""

    @property
    def size_multiple(self) -> int:
        """The LR sizes the network runs are multiples of this; an image is reflect-padded up to one."""

    @property
    def noise_factor(self) -> int:
        """LR pixels per noise pixel, on each side (tile starts are multiples of it)."""

    @property
    def device(self) -> torch.device:
        """Where ``run`` wants its inputs."""

    def draw_noise(self, height: int, width: int, seed: int) -> Tensor:
        """The noise of one padded LR image of height x width (multiples of ``size_multiple``) from ``seed``:
        (D, 1, C, height / noise_factor, width / noise_factor), D >= 1 draws (D > 1: a sampler's per-step noise)."""

    def run(self, lr: Tensor, noise: Tensor) -> Tensor:
        """LR tiles (N, 3, h, w) in [-1, 1] and their noise slices (D, N, C, h / noise_factor, w / noise_factor) ->
        HR tiles (N, 3, h scale, w scale) in [-1, 1]."""


def model_noise(config: ModelConfig, height: int, width: int, seed: int, draws: int = 1) -> Tensor:
    """Standard normal noise (draws, 1, C, h, w) of a tadsr model for a padded LR image of height x width, from
    ``seed`` on the CPU: draw 0 is the prior noise (the same whatever ``draws``), draws 1.. the stochastic sampler's
    per-step noise at t = T-1 .. 1, one after the other from the same generator."""
    f = config.unet.lq_factor  # LR pixels per latent pixel
    shape = (1, config.unet.in_channels, height // f, width // f)
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(shape, generator=gen) for _ in range(draws)])


class ModelGeometry:
    """``Backend``'s geometry read from a tadsr ``ModelConfig`` (``config``): for the backends that run a tadsr
    model, in PyTorch (``ModelBackend``) or exported (``tadsr.inference.onnx.OnnxModel``)."""

    config: ModelConfig

    @property
    def scale(self) -> int:
        return self.config.scale

    @property
    def size_multiple(self) -> int:
        return self.config.lr_multiple

    @property
    def noise_factor(self) -> int:
        return self.config.unet.lq_factor


class ModelBackend(ModelGeometry):
    """A tadsr ``SRModel`` as a ``Backend``: ``steps`` network calls (1, or the schedule's T; by default 1 for a
    student and T for a teacher) with the T-step ``sampler`` ("deterministic", Eq. 3, or "stochastic", Eq. 2, its
    per-step noise drawn with the prior's from the seed; one step is the same under both).

    ``device``: None is CUDA when available. ``dtype`` is the compute precision: float32, or float16 / bfloat16
    under autocast (weights stay float32); by default float16 on CUDA and float32 elsewhere. ``channels_last`` and
    ``compile`` are the opt-in speed-ups of ``inference.fast.prepare_for_inference``.
    """

    def __init__(self, model: SRModel, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 steps: int | None = None, sampler: SamplerName = "deterministic", channels_last: bool = False,
                 compile: bool = False) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu" and not cpu_bf16_native():
            warnings.warn("bf16 on this CPU is emulated (no AVX512-BF16, AMX or ARM BF16): slower than fp32",
                          RuntimeWarning, stacklevel=2)
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        cfg = model.config
        try:
            self.steps = resolve_steps(cfg.role, cfg.schedule.num_steps, steps)
        except ValueError as err:
            raise ConfigError(f"{err} for this model") from None
        self.sampler = sampler
        self.model = prepare_for_inference(model.to(self.device), channels_last=channels_last, compile=compile)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def draw_noise(self, height: int, width: int, seed: int) -> Tensor:
        """``model_noise``: the prior's draw, and the stochastic T-step sampler's per-step draws after it."""
        stochastic = self.sampler == "stochastic" and self.steps > 1
        return model_noise(self.config, height, width, seed, self.config.schedule.num_steps if stochastic else 1)

    def run(self, lr: Tensor, noise: Tensor) -> Tensor:
        return super_resolve(self.model, lr, steps=self.steps, sampler=self.sampler, noise=noise[0],
                             step_noise=noise[1:] if noise.shape[0] > 1 else None,
                             autocast_dtype=None if self.dtype == torch.float32 else self.dtype)


def fixed_tile(backend: Backend) -> tuple[int, int]:
    """(tile, seed) of a backend that runs only tile x tile inputs with its own noise; (0, 0) for any other."""
    return getattr(backend, "fixed_tile", 0), getattr(backend, "fixed_seed", 0)


def backend_name(backend: Backend) -> str:
    """How a message names a backend: its file (``path``, as an ``OnnxModel`` has), else its class."""
    path = getattr(backend, "path", None)
    return str(path) if path is not None else type(backend).__name__
