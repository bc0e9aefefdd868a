"""The one-step student of an SD-based teacher as one safetensors file, run as a ``Backend`` (paper Appendix B).

The file holds the student's UNet (``unet.*``), the teacher's VAE (``vae.*``) and the prompt embedding computed once
at distillation (``prompt_embeds``, so no text encoder is needed to run it); its metadata holds ``format`` =
``tadsr-sd-student``, the diffusers configs of both networks and of the low-res scheduler, the noise level, the
student's timestep, the prediction type and the process's ``alphas_cumprod`` (as JSON). Loading builds only
``UNet2DConditionModel``, ``AutoencoderKL`` and the low-res scheduler's class from the allow-list of
``tadsr.sd.diffusers_teacher``, from those configs; nothing in the file is executed.

Nothing in the file is trusted before it is checked (``read_sd_student``, no diffusers needed): every metadata value
against the others (the timestep within its ``alphas_cumprod``, each in (0, 1]; the noise level within the low-res
scheduler's steps and the UNet's noise-level classes; a supported prediction type and scheduler), the configs as a
diffusers folder's are, the prompt embedding's shape; then each network is built on the meta device and its every
shape compared with the file's header before a byte is allocated (``load_sd_student``). Each problem is one line
naming the file and the key.

One step (``SDStudent.upscale_latents``): the LR image noised to the noise level (its noise drawn per image), z_T a
standard normal draw, the UNet once at ``timestep``, x0_hat decoded by the VAE. Both draws are one (1, 4 + 3, h, w)
tensor at the LR size (``SDStudent.draw_noise``), so that the tiling (``tadsr.inference.tiling``) gives each tile its
slice of one draw per image: a tiled run is seamless and reproducible from ``--seed``. ``SDStudent`` has what the
tiler and ``tadsr.inference.upscaler.Upscaler`` need of a network (the ``Backend`` Protocol, structurally).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from tadsr.checkpoints import SD_STUDENT_FORMAT, CheckpointError, atomic_save_file
from tadsr.config_checks import is_number
from tadsr.errors import TadsrError, first_line
from tadsr.model import ModelNotFoundError
from tadsr.sd.diffusers_teacher import (
    MAX_TIMESTEPS,
    PREDICTIONS,
    SCHEDULERS,
    TensorRef,
    build_on_meta,
    build_scheduler,
    check_noise_level,
    check_output,
    check_pipeline,
    check_prompt_embeds,
    check_scheduler_config,
    check_unet_config,
    check_vae_config,
    fit_network,
    foreign_runtime,
    import_diffusers,
    materialize,
    noise_level_range,
    parse_config,
    read_header,
)
from tadsr.sd.process import decode_latents, noised_condition, unet_multiple, unet_x0, vae_scale

METADATA = ("unet_config", "vae_config", "low_res_scheduler", "low_res_scheduler_config", "noise_level", "timestep",
            "prediction", "alphas_cumprod")  # what a student file's metadata must hold


def save_sd_student(path: str | os.PathLike, unet: Any, vae: Any, low_res_scheduler: Any, prompt_embeds: Tensor,
                    noise_level: int, timestep: int, prediction: str, alphas_cumprod: Tensor,
                    max_noise_level: int | None = None) -> None:
    """Write the student file (module docstring), atomically; tensors contiguous float32. ``max_noise_level``, the
    teacher pipeline's (``DiffusersUpscaleTeacher.max_noise_level``), is recorded if given, and then bounds the
    noise level when the file is read."""
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    tensors |= {f"vae.{k}": v for k, v in vae.state_dict().items()}
    tensors["prompt_embeds"] = prompt_embeds[:1]
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    from tadsr.version import __version__

    metadata = {"format": SD_STUDENT_FORMAT, "tadsr_version": __version__, "unet_config": _config_json(unet.config),
                "vae_config": _config_json(vae.config), "low_res_scheduler": type(low_res_scheduler).__name__,
                "low_res_scheduler_config": _config_json(low_res_scheduler.config),
                "noise_level": str(noise_level), "timestep": str(timestep), "prediction": prediction,
                "alphas_cumprod": json.dumps([float(a) for a in alphas_cumprod.double()])}
    if max_noise_level is not None:
        metadata["max_noise_level"] = str(max_noise_level)
    atomic_save_file(tensors, path, metadata)


def _config_json(config: Any) -> str:
    """A diffusers config as JSON, without its private entries (``_name_or_path``, versions)."""
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")})


@dataclass
class SDStudent:
    """A loaded student: its UNet and VAE (eval mode), the low-res scheduler and what one step needs; a
    ``Backend`` (float32, one step, on the device it was loaded to)."""

    noise_factor = 1  # both draws are at the LR size

    unet: Any
    vae: Any
    low_res_scheduler: Any
    prompt_embeds: Tensor
    noise_level: int
    timestep: int
    prediction: str
    alphas_cumprod: Tensor
    name: str = "the SD student"  # what its errors name: the file

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def scale(self) -> int:
        return vae_scale(self.vae)

    @property
    def size_multiple(self) -> int:
        return unet_multiple(self.unet)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @torch.no_grad()
    def upscale_latents(self, lr: Tensor, noise: Tensor) -> Tensor:
        """(N, 3, h, w) LR in [-1, 1] and (N, latent_channels + 3, h, w) standard normal draws (z_T, then the LR
        image's noise) -> (N, 3, h s, w s) HR in [-1, 1], clamped."""
        noise = noise.to(self.device)
        z_T, lr_noise = noise[:, :self.latent_channels], noise[:, self.latent_channels:]
        cond = noised_condition(self.low_res_scheduler, lr, lr_noise, self.noise_level, self.prompt_embeds)
        t = torch.full((lr.shape[0],), self.timestep, dtype=torch.long, device=self.device)
        return decode_latents(self.vae, unet_x0(self.unet, self.alphas_cumprod, self.prediction, z_T, t, cond))

    def draw_noise(self, height: int, width: int, seed: int) -> Tensor:
        """One standard normal (1, 1, latent_channels + 3, h, w) draw from ``seed`` on the CPU: z_T's channels, then
        the LR image's noise."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randn((1, 1, self.latent_channels + 3, height, width), generator=gen)

    def run(self, lr: Tensor, noise: Tensor) -> Tensor:
        """``upscale_latents`` of LR tiles and their slices (1, N, latent_channels + 3, h, w) of the draw; what
        diffusers raises, or non-finite values, one ``BackendError`` naming the file."""
        with foreign_runtime(self.name):
            out = self.upscale_latents(lr, noise[0])
        return check_output(self.name, out)


@dataclass(frozen=True)
class StudentFile:
    """A student file's checked metadata and tensor header (``read_sd_student``): nothing allocated yet."""

    path: Path
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    scheduler_class: str
    scheduler_config: dict[str, Any]
    noise_level: int
    timestep: int
    prediction: str
    alphas_cumprod: list[float]
    tensors: dict[str, TensorRef]

    @property
    def scale(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)  # as ``vae_scale``


def _natural(text: str, source: str, key: str) -> int:
    """A metadata entry that must be a non-negative integer written in decimal digits."""
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise CheckpointError(f"{source}: metadata {key} = {text[:40]!r}: not a non-negative integer")
    return int(text)


def read_sd_student(path: str | os.PathLike) -> StudentFile:
    """A student file's metadata and header, each value checked against the others (module docstring) without
    diffusers and without reading a weight; one line naming the file and the key otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: "
                              f"{first_line(err)})") from None
    if meta.get("format") != SD_STUDENT_FORMAT:
        raise CheckpointError(f"{path}: not an SD student file (format {meta.get('format')!r})")
    for key in METADATA:
        if key not in meta:
            raise CheckpointError(f"{path}: metadata {key} missing (a damaged SD student file)")
    configs = {}
    for key, check in (("unet_config", check_unet_config), ("vae_config", check_vae_config)):
        configs[key] = parse_config(meta[key], f"{path}: metadata {key}")
        check(configs[key], f"{path}: metadata {key}")
    scheduler_class = meta["low_res_scheduler"]
    if scheduler_class not in SCHEDULERS:
        raise CheckpointError(f"{path}: metadata low_res_scheduler = {scheduler_class[:40]!r}: supported "
                              f"{', '.join(SCHEDULERS)}")
    scheduler = parse_config(meta["low_res_scheduler_config"], f"{path}: metadata low_res_scheduler_config")
    check_scheduler_config(scheduler, f"{path}: metadata low_res_scheduler_config", sampler=False)
    alphas = _alphas(meta["alphas_cumprod"], path)
    timestep = _natural(meta["timestep"], str(path), "timestep")
    if timestep >= len(alphas):
        raise CheckpointError(f"{path}: metadata timestep = {timestep}: not a timestep of its schedule (0 to "
                              f"{len(alphas) - 1}, its alphas_cumprod)")
    noise_level = _natural(meta["noise_level"], str(path), "noise_level")
    most = _natural(meta["max_noise_level"], str(path), "max_noise_level") if "max_noise_level" in meta else None
    check_noise_level(noise_level, noise_level_range(configs["unet_config"], scheduler, most), str(path),
                      "metadata noise_level")
    if meta["prediction"] not in PREDICTIONS:
        raise CheckpointError(f"{path}: metadata prediction = {meta['prediction'][:40]!r}: supported "
                              f"{', '.join(PREDICTIONS)}")
    tensors = read_header([path], str(path))
    if "prompt_embeds" not in tensors:
        raise CheckpointError(f"{path}: no prompt_embeds tensor (a damaged SD student file)")
    check_prompt_embeds(tensors["prompt_embeds"].shape, configs["unet_config"], f"{path}: prompt_embeds")
    check_pipeline(configs["unet_config"], configs["vae_config"], f"{path}: metadata",
                   tensors["prompt_embeds"].shape[-1])
    other = sorted(k for k in tensors if k != "prompt_embeds" and not k.startswith(("unet.", "vae.")))
    if other:
        raise CheckpointError(f"{path}: unexpected tensor(s) {', '.join(other[:8])} (a student file holds unet.*, "
                              "vae.* and prompt_embeds)")
    return StudentFile(path, configs["unet_config"], configs["vae_config"], scheduler_class, scheduler, noise_level,
                       timestep, meta["prediction"], alphas, tensors)


def _alphas(text: str, path: Path) -> list[float]:
    """The metadata's ``alphas_cumprod``: a JSON list of 1 to ``MAX_TIMESTEPS`` numbers, each in (0, 1]."""
    try:
        alphas = json.loads(text)
    except (ValueError, RecursionError):
        alphas = None
    if not (isinstance(alphas, list) and 1 <= len(alphas) <= MAX_TIMESTEPS and all(
            is_number(a) and math.isfinite(a) and 0 < a <= 1
            for a in alphas)):
        raise CheckpointError(f"{path}: metadata alphas_cumprod: not a JSON list of 1 to {MAX_TIMESTEPS} numbers "
                              "in (0, 1]")
    return [float(a) for a in alphas]


def sd_student_scale(path: str | os.PathLike) -> int:
    """A student file's scale from its checked metadata alone (``read_sd_student``: no weights read, no
    diffusers); one line if it is damaged."""
    return read_sd_student(path).scale


def load_sd_student(path: str | os.PathLike, device: str | torch.device = "cpu") -> SDStudent:
    """Rebuild a student file's networks from its checked configs (``read_sd_student``) on the meta device, check
    every shape against the file's header, then allocate and load (strict); one line when the file is not one, or
    damaged (any error of diffusers on the way too)."""
    info = read_sd_student(path)
    path = info.path
    diffusers = import_diffusers()
    low_res = build_scheduler(diffusers, info.scheduler_class, info.scheduler_config,
                              f"{path}: metadata low_res_scheduler_config")
    planned = []
    for prefix, network, config in (("unet.", diffusers.UNet2DConditionModel, info.unet_config),
                                    ("vae.", diffusers.AutoencoderKL, info.vae_config)):
        source = f"{path} ({prefix}*)"
        module = build_on_meta(network, config, source)
        refs = {k[len(prefix):]: ref for k, ref in info.tensors.items() if k.startswith(prefix)}
        planned.append((network, config, module, fit_network(module, refs, source), source))
    try:
        unet, vae = (materialize(module, fitted, device, lambda network=network, config=config:
                                 network.from_config(config))
                     for network, config, module, fitted, source in planned)
        with safe_open(str(path), framework="pt") as f:
            prompt_embeds = f.get_tensor("prompt_embeds").float().to(device)
    except TadsrError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path}: its weights cannot be loaded ({type(err).__name__}: "
                              f"{first_line(err)})") from None
    return SDStudent(unet, vae, low_res, prompt_embeds, info.noise_level, info.timestep, info.prediction,
                     torch.tensor(info.alphas_cumprod, dtype=torch.float64), name=str(path))
