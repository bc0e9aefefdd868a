"""The one-step student of an SD-based teacher as one safetensors file, run as a ``Backend`` (paper Appendix B).

The file holds the student's UNet (``unet.*``), the teacher's VAE (``vae.*``) and the prompt embedding computed once
at distillation (``prompt_embeds``, so no text encoder is needed to run it); its metadata holds ``format`` =
``tadsr-sd-student``, the diffusers configs of both networks and of the low-res scheduler, the noise level, the
student's timestep, the prediction type and the process's ``alphas_cumprod`` (as JSON). Loading builds only
``UNet2DConditionModel``, ``AutoencoderKL`` and the low-res scheduler's class from the allow-list of
``tadsr.sd.diffusers_teacher``, from those configs; nothing in the file is executed.

One step (``SDStudent.upscale_latents``): the LR image noised to the noise level (its noise drawn per image), z_T a
standard normal draw, the UNet once at ``timestep``, x0_hat decoded by the VAE. Both draws are one (1, 4 + 3, h, w)
tensor at the LR size (``SDStudent.draw_noise``), so that the tiling (``tadsr.inference.tiling``) gives each tile its
slice of one draw per image: a tiled run is seamless and reproducible from ``--seed``. ``SDStudent`` has what the
tiler and ``tadsr.inference.upscaler.Upscaler`` need of a network (the ``Backend`` Protocol, structurally).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from tadsr.checkpoints import SD_STUDENT_FORMAT, CheckpointError, atomic_save_file
from tadsr.errors import ConfigError
from tadsr.model import ModelNotFoundError
from tadsr.sd.diffusers_teacher import SCHEDULERS, import_diffusers
from tadsr.sd.process import decode_latents, noised_condition, unet_multiple, unet_x0, vae_scale


def save_sd_student(path: str | os.PathLike, unet: Any, vae: Any, low_res_scheduler: Any, prompt_embeds: Tensor,
                    noise_level: int, timestep: int, prediction: str, alphas_cumprod: Tensor) -> None:
    """Write the student file (module docstring), atomically; tensors contiguous float32."""
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
        """``upscale_latents`` of LR tiles and their slices (1, N, latent_channels + 3, h, w) of the draw."""
        return self.upscale_latents(lr, noise[0])


def sd_student_scale(path: str | os.PathLike) -> int:
    """A student file's scale from its metadata alone (no weights read, no diffusers); one line if it has none."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return 2 ** (len(json.loads(meta["vae_config"])["block_out_channels"]) - 1)  # as ``vae_scale``
    except Exception as err:
        raise CheckpointError(f"{path}: a damaged SD student file ({type(err).__name__})") from None


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
    if meta.get("format") != SD_STUDENT_FORMAT:
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
        student = SDStudent(unet.to(device).eval(), vae.to(device).eval(), low_res,
                            tensors["prompt_embeds"].to(device), int(meta["noise_level"]), int(meta["timestep"]),
                            meta["prediction"], torch.tensor(json.loads(meta["alphas_cumprod"]), dtype=torch.float64))
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{path}: a damaged SD student file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return student
