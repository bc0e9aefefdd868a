"""The one-step student of an SD-based teacher as one safetensors file, and its ``Upscaler`` (paper Appendix B).

The file holds the student's UNet (``unet.*``), the teacher's VAE (``vae.*``) and the prompt embedding computed once
at distillation (``prompt_embeds``, so no text encoder is needed to run it); its metadata holds ``format`` =
``tadsr-sd-student``, the diffusers configs of both networks and of the low-res scheduler, the noise level, the
student's timestep, the prediction type and the process's ``alphas_cumprod`` (as JSON). Loading builds only
``UNet2DConditionModel``, ``AutoencoderKL`` and the low-res scheduler's class from the allow-list of
``tadsr.sd.diffusers_teacher``, from those configs; nothing in the file is executed.

One step (``SDStudent.upscale_latents``): the LR image noised to the noise level (its noise drawn per image), z_T a
standard normal draw, the UNet once at ``timestep``, x0_hat decoded by the VAE. Both draws are one (N, 4 + 3, h, w)
tensor at the LR size, so that the tiling (``tadsr.inference.tiling``) gives each tile its slice of one draw per
image: a tiled run is seamless and reproducible from ``--seed``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from tadsr.checkpoints import CheckpointError, atomic_save_file
from tadsr.errors import ConfigError
from tadsr.inference.tiling import tiled_super_resolve
from tadsr.inference.upscaler import UpscaleOptions, Upscaler
from tadsr.model import ModelNotFoundError
from tadsr.sd.diffusers_teacher import SCHEDULERS, import_diffusers
from tadsr.sd.process import SDCondition, unet_x0
from tadsr.sd.tiles import TiledModel, TileGeometry

FORMAT = "tadsr-sd-student"


def save_sd_student(path: str | os.PathLike, unet: Any, vae: Any, low_res_scheduler: Any, prompt_embeds: Tensor,
                    noise_level: int, timestep: int, prediction: str, alphas_cumprod: Tensor) -> None:
    """Write the student file (module docstring), atomically; tensors contiguous float32."""
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    tensors |= {f"vae.{k}": v for k, v in vae.state_dict().items()}
    tensors["prompt_embeds"] = prompt_embeds[:1]
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    from tadsr import __version__

    metadata = {"format": FORMAT, "tadsr_version": __version__, "unet_config": _config_json(unet.config),
                "vae_config": _config_json(vae.config), "low_res_scheduler": type(low_res_scheduler).__name__,
                "low_res_scheduler_config": _config_json(low_res_scheduler.config),
                "noise_level": str(noise_level), "timestep": str(timestep), "prediction": prediction,
                "alphas_cumprod": json.dumps([float(a) for a in alphas_cumprod.double()])}
    atomic_save_file(tensors, path, metadata)


def _config_json(config: Any) -> str:
    """A diffusers config as JSON, without its private entries (``_name_or_path``, versions)."""
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")})


@dataclass
class SDStudent:
    """A loaded student: its UNet and VAE (eval mode), the low-res scheduler and what one step needs."""

    unet: Any
    vae: Any
    low_res_scheduler: Any
    prompt_embeds: Tensor
    noise_level: int
    timestep: int
    prediction: str
    alphas_cumprod: Tensor

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def lr_multiple(self) -> int:
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @torch.no_grad()
    def upscale_latents(self, lr: Tensor, noise: Tensor) -> Tensor:
        """(N, 3, h, w) LR in [-1, 1] and (N, latent_channels + 3, h, w) standard normal draws (z_T, then the LR
        image's noise) -> (N, 3, h s, w s) HR in [-1, 1], clamped."""
        device, n = self.device, lr.shape[0]
        lr, noise = lr.to(device), noise.to(device)
        z_T, lr_noise = noise[:, :self.latent_channels], noise[:, self.latent_channels:]
        level = torch.full((n,), self.noise_level, dtype=torch.long, device=device)
        cond = SDCondition(self.low_res_scheduler.add_noise(lr, lr_noise, level[:1]), level,
                           self.prompt_embeds.to(device).expand(n, -1, -1))
        t = torch.full((n,), self.timestep, dtype=torch.long, device=device)
        z_0 = unet_x0(self.unet, self.alphas_cumprod, self.prediction, z_T, t, cond)
        return self.vae.decode(z_0 / self.vae.config.scaling_factor, return_dict=False)[0].clamp(-1, 1)


def load_sd_student(path: str | os.PathLike, device: str | torch.device = "cpu") -> SDStudent:
    """Rebuild a student file's networks from its configs and load its weights (strict); one line when the file is
    not one, or damaged."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such model file")
    diffusers = import_diffusers()
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an SD student file (format {meta.get('format')!r})")
    try:
        scheduler_class = meta["low_res_scheduler"]
        if scheduler_class not in SCHEDULERS:
            raise ConfigError(f"low-res scheduler {scheduler_class!r} not supported")
        unet = diffusers.UNet2DConditionModel.from_config(json.loads(meta["unet_config"]))
        vae = diffusers.AutoencoderKL.from_config(json.loads(meta["vae_config"]))
        low_res = getattr(diffusers, scheduler_class).from_config(json.loads(meta["low_res_scheduler_config"]))
        for prefix, module in (("unet.", unet), ("vae.", vae)):
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                   strict=True)
        student = SDStudent(unet.to(device).eval(), vae.to(device).eval(), low_res, tensors["prompt_embeds"],
                            int(meta["noise_level"]), int(meta["timestep"]), meta["prediction"],
                            torch.tensor(json.loads(meta["alphas_cumprod"]), dtype=torch.float64))
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{path}: a damaged SD student file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return student


class SDStudentUpscaler(Upscaler):
    """``Upscaler`` over an ``SDStudent``: the same reading, padding, tiling (seamless: one draw per image, sliced
    by the tiles), colour handling and file guarantees as a tadsr model."""

    def __init__(self, student: SDStudent, **options: Any) -> None:
        self.student, self.device, self.dtype = student, student.device, torch.float32
        if options.get("steps") not in (None, 1):
            raise ConfigError("an SD student runs one step")
        for name in ("channels_last", "compile"):
            options.pop(name, None)
        self.options = UpscaleOptions(**options)
        self.model = TiledModel(TileGeometry(student.lr_multiple, student.scale, student.latent_channels))

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                  **options: Any) -> SDStudentUpscaler:
        return cls(load_sd_student(path, device or "cpu"), **options)

    @property
    def scale(self) -> int:
        return self.student.scale

    @property
    def size_multiple(self) -> int:
        return self.student.lr_multiple

    def network_upscale(self, lr: Tensor, progress: Callable[[int, int], None] | None = None) -> Tensor:
        opts = self.options
        return tiled_super_resolve(self.model, lr, tile=opts.tile, overlap=opts.tile_overlap, steps=1,
                                   seed=opts.seed, batch_size=opts.batch_size, progress=progress,
                                   network=self.student.upscale_latents)
