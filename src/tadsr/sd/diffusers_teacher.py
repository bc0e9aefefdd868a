"""An SD-based super-resolution model in a diffusers folder, run as a teacher (paper Appendix B).

Supported first: the layout diffusers itself ships for Stable Diffusion x4 upscaler
(``StableDiffusionUpscalePipeline``):

* ``unet`` (``UNet2DConditionModel``) takes the latent and the LR image concatenated, (N, 4 + 3, h, w), the prompt
  embedding as cross-attention context and the LR image's noise level as ``class_labels``;
* ``low_res_scheduler`` (``DDPMScheduler``) noises the LR image to that level before it conditions the UNet;
* ``scheduler`` (its sampler: DDIM, DDPM, DPM-Solver++ or Euler) and the UNet's prediction type (``epsilon`` or
  ``v_prediction``; the released x4 upscaler is v-prediction);
* ``vae`` (``AutoencoderKL``) whose decoder turns the LR-sized latent into the x4 image
  (``latent / vae.config.scaling_factor``);
* ``text_encoder`` / ``tokenizer`` (CLIP, from transformers) only to embed the prompt, once.

The sampler (``sample``) is diffusers' own loop written out — the same random draws in the same order (the LR noise,
then the initial latent) and the scheduler's ``step`` — so that on the same weights, generator and scheduler it gives
the pipeline's output; ``tests/test_sd_teacher.py`` checks that on a tiny random pipeline. Classifier-free guidance is
not used (guidance scale 0, as TAD-SeeSR's inference).

Loading executes no code from the folder: only the classes named here are built, weights are read from
``.safetensors`` files only (``use_safetensors=True``, local files only), and a folder that names another pipeline,
a missing component, an unsupported scheduler or prediction type is one ``ConfigError`` line naming the folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tadsr.errors import ConfigError, MissingExtraError, NotFoundError, first_line
from tadsr.sd.process import SDCondition, decode_latents, noised_condition, unet_multiple, vae_scale

PIPELINES = ("StableDiffusionUpscalePipeline",)
SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler")
PREDICTIONS = ("epsilon", "v_prediction")
REQUIRED = ("unet", "vae", "scheduler", "low_res_scheduler")
TEXT_CLASSES = {"tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "text_encoder": ("CLIPTextModel",)}
DEFAULT_STEPS = 20  # a pipeline's sampler steps in `tadsr upscale` when none are asked for
DEFAULT_NOISE_LEVEL = 20  # the LR image's noise level (the x4 upscaler's conditioning)


def import_diffusers() -> Any:
    """The diffusers module, or a one-line MissingExtraError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise MissingExtraError("SD-based models need diffusers, an optional extra: pip install 'tadsr[sd]'") from None
    return diffusers


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a diffusers pipeline (a ``model_index.json``)."""
    return Path(path).is_dir() and (Path(path) / "model_index.json").is_file()


@dataclass(frozen=True)
class PipelineIndex:
    """What ``model_index.json`` says: the pipeline class and each component's (library, class)."""

    folder: Path
    pipeline: str
    components: dict[str, tuple[str, str]]


def read_index(folder: str | os.PathLike) -> PipelineIndex:
    """Check ``folder`` is a supported diffusers pipeline with every component it needs; one line otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such folder")
    index = folder / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    try:
        data = json.loads(index.read_text())
        pipeline = data["_class_name"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{index}: not a diffusers model index ({type(err).__name__}: {err})") from None
    if pipeline not in PIPELINES:
        raise ConfigError(f"{folder}: a {pipeline}; tadsr's diffusers backend runs {', '.join(PIPELINES)} folders")
    components = {k: tuple(v) for k, v in data.items()
                  if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None}
    for name in REQUIRED:
        if name not in components:
            raise ConfigError(f"{folder}: component {name!r} missing from model_index.json")
        if not (folder / name).is_dir():
            raise ConfigError(f"{folder}: component {name!r} missing (no {name}/ folder)")
    for name in ("unet", "vae"):
        if not any((folder / name).glob("*.safetensors")):
            raise ConfigError(f"{folder / name}: no .safetensors weights (tadsr reads no pickled weights)")
    for name in ("scheduler", "low_res_scheduler"):
        if components[name][1] not in SCHEDULERS:
            raise ConfigError(f"{folder}: {name} is a {components[name][1]}; supported: {', '.join(SCHEDULERS)}")
    return PipelineIndex(folder, pipeline, components)  # type: ignore[arg-type]


def pipeline_scale(index: PipelineIndex) -> int:
    """A checked folder's scale from its VAE's ``config.json`` alone (no weights read, no diffusers): as
    ``tadsr.sd.process.vae_scale``; one line if the config is damaged."""
    path = index.folder / "vae" / "config.json"
    try:
        return 2 ** (len(json.loads(path.read_text())["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a readable VAE config ({type(err).__name__}: {first_line(err)})") from None


class DiffusersUpscaleTeacher:
    """A ``StableDiffusionUpscalePipeline`` folder as a teacher: ``sample`` (its multi-step sampler, on latents),
    ``decode`` (the VAE) and ``upscale`` (both), with the prompt embedded once (``prompt_embeds``, (1, L, D))."""

    def __init__(self, unet: Any, vae: Any, scheduler: Any, low_res_scheduler: Any, prompt_embeds: Tensor,
                 noise_level: int = DEFAULT_NOISE_LEVEL) -> None:
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTIONS:
            raise ConfigError(f"the scheduler's prediction type {self.prediction_type!r}: supported "
                              f"{', '.join(PREDICTIONS)}")
        self.unet, self.vae = unet.eval(), vae.eval()
        self.scheduler, self.low_res_scheduler = scheduler, low_res_scheduler
        self.prompt_embeds, self.noise_level = prompt_embeds, noise_level
        self.scale, self.lr_multiple = vae_scale(vae), unet_multiple(unet)
        self.latent_channels = int(vae.config.latent_channels)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, prompt: str = "", prompt_embeds: Tensor | None = None,
                    noise_level: int = DEFAULT_NOISE_LEVEL,
                    device: str | torch.device = "cpu") -> DiffusersUpscaleTeacher:
        """Load a checked folder (``read_index``). The prompt is embedded with the folder's text encoder unless
        ``prompt_embeds`` is given; a folder without one then needs ``prompt_embeds``."""
        index = read_index(folder)
        diffusers = import_diffusers()
        load = {"local_files_only": True}
        unet = diffusers.UNet2DConditionModel.from_pretrained(index.folder, subfolder="unet", use_safetensors=True,
                                                              **load)
        vae = diffusers.AutoencoderKL.from_pretrained(index.folder, subfolder="vae", use_safetensors=True, **load)
        schedulers = [getattr(diffusers, index.components[name][1]).from_pretrained(index.folder, subfolder=name,
                                                                                      **load)
                      for name in ("scheduler", "low_res_scheduler")]
        if prompt_embeds is None:
            prompt_embeds = embed_prompt(index, prompt)
        return cls(unet.to(device), vae.to(device), *schedulers, prompt_embeds.to(device), noise_level)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def condition(self, lr: Tensor, generator: torch.Generator | None = None,
                  lr_noise: Tensor | None = None) -> SDCondition:
        """The UNet's conditioning for (N, 3, h, w) LR images in [-1, 1]: the LR image noised to ``noise_level`` by
        the low-res scheduler (``lr_noise``, else drawn from ``generator``), the level, the prompt embedding."""
        if lr_noise is None:
            randn = import_diffusers().utils.torch_utils.randn_tensor
            lr_noise = randn(lr.shape, generator=generator, device=self.device, dtype=self.prompt_embeds.dtype)
        return noised_condition(self.low_res_scheduler, lr, lr_noise, self.noise_level, self.prompt_embeds)

    @torch.no_grad()
    def sample(self, lr: Tensor, steps: int, generator: torch.Generator | None = None,
               progress: Callable[[int, int], None] | None = None, cond: SDCondition | None = None,
               latents: Tensor | None = None) -> Tensor:
        """The multi-step sampler from pure noise: (N, 3, h, w) LR in [-1, 1] -> (N, 4, h, w) latents.

        Draws from ``generator`` in the pipeline's order: the LR image's noise (unless ``cond`` is given), then the
        initial latent (unless ``latents``, the noise z_T, is given: distillation's shared z_T)."""
        randn = import_diffusers().utils.torch_utils.randn_tensor
        device, n = self.device, lr.shape[0]
        self.scheduler.set_timesteps(steps, device=device)
        cond = cond if cond is not None else self.condition(lr, generator)
        if latents is None:
            latents = randn((n, self.latent_channels, *lr.shape[2:]), generator=generator, device=device,
                            dtype=self.prompt_embeds.dtype)
        latents = latents.to(device, self.prompt_embeds.dtype) * self.scheduler.init_noise_sigma
        extra = _step_kwargs(self.scheduler, generator)
        for i, t in enumerate(self.scheduler.timesteps):
            x = torch.cat([self.scheduler.scale_model_input(latents, t), cond.image], dim=1)
            out = self.unet(x, t, encoder_hidden_states=cond.context, class_labels=cond.level, return_dict=False)[0]
            latents = self.scheduler.step(out, t, latents, **extra, return_dict=False)[0]
            if progress:
                progress(i + 1, len(self.scheduler.timesteps))
        return latents

    @torch.no_grad()
    def encode(self, image: Tensor) -> Tensor:
        """(N, 3, H, W) image in [-1, 1] -> (N, 4, H / s, W / s) latents (the VAE posterior's mean, scaled)."""
        return self.vae.encode(image.to(self.device)).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """(N, 4, h, w) latents -> (N, 3, h s, w s) image in [-1, 1] (clamped)."""
        return decode_latents(self.vae, latents)

    def upscale(self, lr: Tensor, steps: int, seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> Tensor:
        """(N, 3, h, w) LR in [-1, 1] -> (N, 3, h s, w s) in [-1, 1]: ``steps`` sampler steps from ``seed``."""
        generator = torch.Generator(self.device).manual_seed(seed)
        return self.decode(self.sample(lr, steps, generator, progress))


def _step_kwargs(scheduler: Any, generator: torch.Generator | None) -> dict[str, Any]:
    """The extra arguments a scheduler's ``step`` takes, as the pipelines pass them (eta 0, the generator)."""
    import inspect

    params = set(inspect.signature(scheduler.step).parameters)
    return {k: v for k, v in (("eta", 0.0), ("generator", generator)) if k in params}


def embed_prompt(index: PipelineIndex, prompt: str) -> Tensor:
    """The prompt's (1, L, D) embedding by the folder's CLIP text encoder (the last hidden state, as the
    pipeline's ``encode_prompt`` without clip skip); one line when the folder or transformers lacks it."""
    for name in ("text_encoder", "tokenizer"):
        if name not in index.components or not (index.folder / name).is_dir():
            raise ConfigError(f"{index.folder}: no {name} to embed the prompt (pass the prompt's embedding instead)")
        if index.components[name][1] not in TEXT_CLASSES[name]:
            raise ConfigError(f"{index.folder}: {name} is a {index.components[name][1]}; supported: "
                              f"{', '.join(TEXT_CLASSES[name])}")
    try:
        import transformers
    except ImportError:
        raise MissingExtraError(f"{index.folder}: its text encoder needs transformers: pip install 'tadsr[sd]'") \
            from None
    tokenizer = getattr(transformers, index.components["tokenizer"][1]).from_pretrained(
        index.folder, subfolder="tokenizer", local_files_only=True)
    encoder = getattr(transformers, index.components["text_encoder"][1]).from_pretrained(
        index.folder, subfolder="text_encoder", use_safetensors=True, local_files_only=True)
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0]


class DiffusersBackend:
    """A diffusers teacher as a ``Backend`` (``tadsr.inference.backend``, structurally): ``steps`` sampler steps
    of its own scheduler, float32, on the teacher's device.

    Its noise for an image (``draw_noise``) is the pipeline's own two draws from ``seed``, in the pipeline's order
    (the LR image's noise, then the initial latent), so that a whole image (``tile`` 0) is diffusers' picture for
    that seed; tiled, each tile samples from its slice of those draws and the overlaps are blended, as ``tadsr
    upscale`` tiles any model. A scheduler whose steps draw noise (DDPM, Euler ancestral) draws it from the same
    generator, continued after those two draws, tile after tile: as the pipeline does for a whole image, and the
    same bits for the same seed and tiling."""

    noise_factor = 1  # both draws are at the LR size

    def __init__(self, teacher: DiffusersUpscaleTeacher, steps: int | None = None) -> None:
        if steps is not None and steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        self.teacher, self.steps = teacher, steps or DEFAULT_STEPS
        self.generator: torch.Generator | None = None  # the last ``draw_noise``'s, continued by the steps' draws

    @property
    def scale(self) -> int:
        return self.teacher.scale

    @property
    def size_multiple(self) -> int:
        return self.teacher.lr_multiple

    @property
    def device(self) -> torch.device:
        return self.teacher.device

    def draw_noise(self, height: int, width: int, seed: int) -> Tensor:
        """(1, 1, latent_channels + 3, h, w): the initial latent's channels, then the LR image's noise; drawn from
        ``torch.Generator(device).manual_seed(seed)`` LR noise first, as ``DiffusersUpscaleTeacher.sample`` draws."""
        randn = import_diffusers().utils.torch_utils.randn_tensor
        generator = torch.Generator(self.device).manual_seed(seed)
        draw = dict(generator=generator, device=self.device, dtype=self.teacher.prompt_embeds.dtype)
        lr_noise = randn((1, 3, height, width), **draw)
        latents = randn((1, self.teacher.latent_channels, height, width), **draw)
        self.generator = generator
        return torch.cat([latents, lr_noise], dim=1)[None]

    def run(self, lr: Tensor, noise: Tensor) -> Tensor:
        """LR tiles (N, 3, h, w) and their noise slices (1, N, latent_channels + 3, h, w) -> HR tiles in [-1, 1]:
        conditioned on the LR slice's noise, sampled from the latent slice, decoded."""
        channels = self.teacher.latent_channels
        cond = self.teacher.condition(lr, lr_noise=noise[0, :, channels:])
        return self.teacher.decode(self.teacher.sample(lr, self.steps, self.generator, cond=cond,
                                                       latents=noise[0, :, :channels]))
