"""SeeSR's and TAD-SeeSR's sampling on loaded parts (``SeeSRParts``), and ``SeeSRBackend``, the tadsr ``Backend`` that
runs it.

Written for tadsr from a reading of the official code (nothing copied): cswry/SeeSR at 8edecc71 (``test_seesr.py``,
``pipelines/pipeline_seesr.py``, ``utils/wavelet_color_fix.py``) with its pinned diffusers 0.21.0
(``schedulers/scheduling_ddpm.py``, ``models/vae.py``), and LearningHx/TAD-SR at 8b0373fd (``TAD-SeeSR/
test_tadsr.py``, ``pipelines/pipeline_tadsr.py``, ``utils/scheduling_ddpm.py``; quoted by statement, the files are
not in the local snapshot). ``tests/test_seesr_pipeline.py`` checks every step against the official pipeline run
on tiny parts with the same injected draws (``scripts/seesr_pipeline_fixtures.py``).

What the official scripts do, in order (SeeSR; TAD-SeeSR where it differs):

1. Tags and image embeddings from the ORIGINAL LR (``test_seesr.py:184``, ``get_validation_prompt`` :134-144):
   DAPE (``tadsr.seesr.tags.Dape``). Prompt ``f"{tags}, {prompt},"`` (:142, ``--prompt`` "" by default) then
   ``+= added_prompt`` (:185; "clean, high-resolution, 8k"; TAD-SeeSR's test_tadsr.py adds "..., extremely
   detailed, best quality, sharp"). So with the default empty prompt the text is ``"cat, dog, ,clean, ..."``.
2. The LR image (PIL, ``test_seesr.py:195-206``, every resize ``Image.resize``'s default: BICUBIC since Pillow 7):
   if a side is under ``process_size // 4`` (512 // 4 = 128) it is scaled so that its short side is 128
   (``int(scale * w), int(scale * h)``); then x4; then resized (not cropped) to sides floored to a multiple of 8.
   That PIL image, as ``uint8 / 255`` (``prepare_image``, pipeline_seesr.py:665-684), is the ControlNet's
   condition and, as ``2 x - 1``, the VAE's input.
3. Text (pipeline_seesr.py:356-388, diffusers' SD ``_encode_prompt``): the tokenizer pads to ``max_length`` =
   ``model_max_length`` (77) and truncates; ``text_encoder(ids)[0]``, the last hidden state (SD-2's diffusers
   text encoder has 23 of OpenCLIP-H's 24 layers: the penultimate layer, after the final LayerNorm); an attention
   mask only if the config says ``use_attention_mask`` (SD-2's does not). The negative prompt is encoded the same
   way (:420-438) and put FIRST: ``cat([negative, prompt])`` (:452); the DAPE embeddings are duplicated (:453).
   Classifier-free guidance only when ``guidance_scale > 1`` (:927): TAD-SeeSR's 0 has none.
4. Start (``start_point='lr'``, :988-993): ``z = vae.encode(2 x - 1).latent_dist.sample() * scaling_factor``
   (the posterior sample, unseeded: ``mean + std * n``, diffusers models/vae.py:659-665), then
   ``add_noise(z, latents, 999)`` with ``latents`` the start noise (``prepare_latents`` :706-724,
   ``init_noise_sigma`` 1): ``sqrt(ab) z + sqrt(1 - ab) n`` with ab in the latent's dtype
   (scheduling_ddpm.py:456-477). Under CFG the VAE encodes the doubled batch; only ``[0:1]`` is used (:993).
5. Each step (:1010-1188): ControlNet(z, t, text, cond = the image in [0, 1], DAPE embeddings) then the UNet with
   its residuals (:1032-1061; ``conditioning_scale`` 1); CFG ``uncond + g (text - uncond)`` (:1181-1183); the
   DDPM step (scheduling_ddpm.py:356-452; ``ddpm_step``). Timesteps from the scheduler's config: SD-2-base's
   ``leading`` spacing and ``steps_offset`` 1 give 981, 961, ..., 1 for 50 steps, although the start is noised to
   999; a timestep above 999 would be skipped (:1011-1014). TAD-SeeSR (pipeline_tadsr.py ``__call__``:
   ``timesteps = torch.tensor([999, 749, 499, 249])``; ``if num_inference_steps == 1: latents =
   self.scheduler.get_z0(latent_model_input, noise_pred, t); break``): one step at 999 and
   ``z0 = (z - sqrt(1 - ab) eps) / sqrt(ab)`` (utils/scheduling_ddpm.py ``get_z0``).
6. ``vae.decode(z / scaling_factor)`` (:1205), ``(x / 2 + 0.5).clamp(0, 1)`` (the image processor), PIL uint8.
7. AdaIN colour fix against the step-2 image (``--align_method`` default 'adain', test_seesr.py:225-231, 263;
   test_tadsr.py the same): per channel ``(x - mean_x) / std_x * std_lr + mean_lr``, std = ``sqrt(var + 1e-5)``
   with the UNBIASED variance (utils/wavelet_color_fix.py ``calc_mean_std``), clamped to [0, 1].
8. ``image.resize((4 w, 4 h))`` of the original LR size (test_seesr.py:233-234; ``resize_flag`` is always True,
   :208): undoes the short-side rule and the floor to 8 (PIL bicubic, antialiased when it shrinks).

Deliberate differences of the tensor API here: images are float tensors, not PIL uint8. ``pil_resize`` computes
Pillow's bicubic exactly (its ``Resample.c`` weights: a = -0.5, support 2 x the downscale factor, the window
clipped at the borders and renormalised, horizontal pass first); with ``quantize=True`` it also rounds as Pillow
does for 8-bit images (22-bit fixed-point weights, uint8 after each pass) and reproduces ``Image.resize``'s
output bit for bit; without it, Pillow's arithmetic in float, clipped to [0, 1] after each pass as the 8-bit code
clips, which differs from the 8-bit result by the rounding alone (under 3 levels after the three resizes).
torch's ``interpolate(mode="bicubic")`` is NOT used: it has a = -0.75 and no antialiasing.
The colour fix takes the float decode, not the uint8 PNG the official fix reads (a difference under 1/255).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tadsr.devices import autocast, resolve_device
from tadsr.errors import ConfigError
from tadsr.inference.tiling import blend_ramp, tile_starts
from tadsr.seesr.parts import (
    DEFAULT_PROMPT,
    ONE_STEP_TIMESTEP,
    PROCESS_SIZE,
    TAD_SEESR_PROMPT,
    SeeSRParts,
    Variant,
)
from tadsr.seesr.tiled_vae import DEFAULT_STATS, STATS_METHODS, StatsMethod, tiled_decode, tiled_encode, vae_tiles

UPSCALE = 4  # test_seesr.py:260 --upscale
LATENT_ALIGN = 8  # test_seesr.py:206: the x4 image's sides are floored to a multiple of 8 (the VAE's factor)
ADAIN_EPS = 1e-5  # utils/wavelet_color_fix.py calc_mean_std
START_TIMESTEP = 999  # test_seesr.py:264 --start_steps; the LR latent is noised to it (pipeline_seesr.py:991)
_PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow libImaging/Resample.c PRECISION_BITS


# --- 1. the prompt -------------------------------------------------------------------------------------------------

def seesr_prompt(tags: str, added_prompt: str = DEFAULT_PROMPT, user_prompt: str = "") -> str:
    """The text SeeSR encodes: ``f"{tags}, {user_prompt},"`` (test_seesr.py:142) then ``added_prompt`` appended
    with nothing between (:185). ``added_prompt`` is SeeSR's default; TAD-SeeSR's is ``TAD_SEESR_PROMPT``."""
    return f"{tags}, {user_prompt}," + added_prompt


def default_added_prompt(variant: Variant) -> str:
    """The ``--added_prompt`` default of the variant's test script."""
    return TAD_SEESR_PROMPT if variant == "tad-seesr" else DEFAULT_PROMPT


# --- 2. the LR image -----------------------------------------------------------------------------------------------

def _bicubic(x: float) -> float:
    """Pillow's bicubic kernel (Resample.c ``bicubic_filter``, a = -0.5)."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def pil_bicubic_weights(size_in: int, size_out: int) -> Tensor:
    """(size_out, size_in) float64 weights of Pillow's bicubic resize along one axis (Resample.c
    ``precompute_coeffs``: centre (i + 0.5) scale, support 2 max(scale, 1), window rounded and clipped to the
    image, kernel argument scaled by 1 / max(scale, 1), weights normalised to sum 1)."""
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        row = [_bicubic((x - center + 0.5) / filterscale) for x in range(lo, hi)]
        total = sum(row)
        for x, w in zip(range(lo, hi), row, strict=True):
            weights[i, x] = w / total if total != 0.0 else w
    return weights


def _fixed_point(weights: Tensor) -> Tensor:
    """Resample.c ``normalize_coeffs_8bpc``: each weight x 2^22 rounded half away from zero, as int64."""
    scaled = weights * (1 << _PIL_PRECISION_BITS)
    return torch.where(scaled < 0, (scaled - 0.5).ceil(), (scaled + 0.5).floor()).to(torch.int64)


def _pass_8bit(x: Tensor, weights: Tensor, dim: int) -> Tensor:
    """One 8-bit pass along ``dim`` (-1: horizontal, -2: vertical): integer sums with a half for rounding, >> 22,
    clipped to [0, 255] (Resample.c ``ImagingResampleHorizontal_8bpc`` / ``Vertical_8bpc``)."""
    k = _fixed_point(weights)
    moved = x.movedim(dim, -1).to(torch.int64)
    acc = (moved.unsqueeze(-2) * k).sum(-1) + (1 << (_PIL_PRECISION_BITS - 1))
    return (acc >> _PIL_PRECISION_BITS).clamp(0, 255).movedim(-1, dim)


def pil_resize(x: Tensor, size: tuple[int, int], *, quantize: bool = False, clip: bool = True) -> Tensor:
    """``Image.resize((w, h))`` with Pillow's default resample (bicubic) of (N, C, H, W) images in [0, 1]
    (``size`` = (h, w)): the horizontal pass, then the vertical one (``ImagingResampleInner``); an axis whose size
    does not change is not resampled. ``quantize``: the image is 8-bit (``round(255 x)``) and every pass rounds
    as Pillow's 8-bit code does (bit-exact to ``Image.resize`` of a uint8 RGB image; the result is ``uint8 /
    255``); otherwise Pillow's float arithmetic (float64 weights, the result in ``x``'s dtype), clipped to [0, 1]
    after each pass as the 8-bit code clips (``clip``; False: Pillow's "F" mode, which does not clip)."""
    h, w = size
    if quantize:
        out = (x * 255).round().clamp(0, 255).to(torch.int64)
        if out.shape[-1] != w:
            out = _pass_8bit(out, pil_bicubic_weights(out.shape[-1], w), -1)
        if out.shape[-2] != h:
            out = _pass_8bit(out, pil_bicubic_weights(out.shape[-2], h), -2)
        return out.to(x.dtype if x.is_floating_point() else torch.float32) / 255
    dtype = x.dtype
    out = x.to(torch.float64)
    if out.shape[-1] != w:
        out = out @ pil_bicubic_weights(out.shape[-1], w).to(out.device).T
        out = out.clamp(0, 1) if clip else out
    if out.shape[-2] != h:
        out = pil_bicubic_weights(out.shape[-2], h).to(out.device) @ out
        out = out.clamp(0, 1) if clip else out
    return out.to(dtype)


def processing_sizes(height: int, width: int, process_size: int = PROCESS_SIZE,
                     scale: int = UPSCALE) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The (h, w) of each resize of test_seesr.py:195-206 for an LR of height x width: after the short-side rule
    (the LR's own size when no side is under ``process_size // scale``), after x ``scale``, after the floor to a
    multiple of 8 (the condition's size; its / 8 is the latent's)."""
    h, w = height, width
    least = process_size // scale
    if width < least or height < least:
        factor = least / min(width, height)
        w, h = int(factor * width), int(factor * height)
    h, w = h * scale, w * scale
    return (h // scale, w // scale), (h, w), (h // LATENT_ALIGN * LATENT_ALIGN, w // LATENT_ALIGN * LATENT_ALIGN)


def prepare_lr(lr: Tensor, *, process_size: int = PROCESS_SIZE, scale: int = UPSCALE,
               quantize: bool = True) -> Tensor:
    """The official condition image (N, 3, H, W) in [0, 1] of LR images (N, 3, h, w) in [0, 1]: the three PIL
    resizes of test_seesr.py:195-206 (``processing_sizes``), each ``pil_resize`` (``quantize``: 8-bit as the
    official PIL images are, the default; the LR is then taken as ``round(255 x)``)."""
    small, big, floored = processing_sizes(lr.shape[-2], lr.shape[-1], process_size, scale)
    x = lr
    for size in (small, big, floored):
        if tuple(x.shape[-2:]) != size:
            x = pil_resize(x, size, quantize=quantize)
    return x


def finish_size(hr: Tensor, lr_size: tuple[int, int], scale: int = UPSCALE, *, quantize: bool = False) -> Tensor:
    """test_seesr.py:233-234: the output resized to ``scale`` x the original LR size (h, w) (nothing when it is
    that size already)."""
    size = (lr_size[0] * scale, lr_size[1] * scale)
    return hr if tuple(hr.shape[-2:]) == size else pil_resize(hr, size, quantize=quantize)


# --- 3. text -------------------------------------------------------------------------------------------------------

def tokenize(tokenizer: Any, prompts: str | Sequence[str]) -> Tensor:
    """Token ids (N, model_max_length): padded to the maximum length and truncated (pipeline_seesr.py:356-363)."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_text(text_encoder: Any, tokenizer: Any, prompts: str | Sequence[str]) -> Tensor:
    """Text embeddings (N, L, D): ``text_encoder(ids)[0]``, the last hidden state (pipeline_seesr.py:377-388; an
    attention mask only if the config asks for one)."""
    ids = tokenize(tokenizer, prompts)
    device = next(text_encoder.parameters()).device
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").attention_mask.to(device)
    with torch.no_grad():
        return text_encoder(ids.to(device), attention_mask=mask)[0]


# --- 4-6. latents --------------------------------------------------------------------------------------------------

def encode_lr(vae: Any, cond: Tensor, posterior_noise: Tensor) -> Tensor:
    """The scaled LR latent: ``vae.encode(2 cond - 1)``'s posterior sample ``mean + std * posterior_noise``
    (pipeline_seesr.py:989; diffusers models/vae.py:659-665) x ``scaling_factor`` (:990)."""
    posterior = vae.encode(cond * 2 - 1).latent_dist
    z = posterior.mean + posterior.std * posterior_noise.to(posterior.mean)
    return z * vae.config.scaling_factor


def _alpha_bar(alphas_cumprod: Tensor, t: int, like: Tensor) -> Tensor:
    """ab_t in ``like``'s dtype and device (scheduling_ddpm.py:463-466: the table is cast before indexing)."""
    return alphas_cumprod.to(device=like.device, dtype=like.dtype)[t]


def add_noise(alphas_cumprod: Tensor, z: Tensor, noise: Tensor, t: int) -> Tensor:
    """``sqrt(ab_t) z + sqrt(1 - ab_t) noise`` (DDPMScheduler.add_noise, scheduling_ddpm.py:456-477)."""
    ab = _alpha_bar(alphas_cumprod, t, z)
    return ab ** 0.5 * z + (1 - ab) ** 0.5 * noise.to(z)


def predict_eps(parts: SeeSRParts, z: Tensor, t: int, cond: Tensor, prompt_embeds: Tensor,
                image_embeds: Tensor) -> Tensor:
    """ControlNet then UNet at timestep ``t`` (pipeline_seesr.py:1032-1061, untiled branch; conditioning scale 1,
    no guess mode): ``cond`` the condition image in [0, 1], ``image_embeds`` DAPE's (through the image
    cross-attention). Every input has z's batch."""
    timestep = torch.tensor(t, dtype=torch.long, device=z.device)
    with parts.controlnet_image.attending(image_embeds):
        down, mid = parts.controlnet(z, timestep, encoder_hidden_states=prompt_embeds, controlnet_cond=cond,
                                     conditioning_scale=1.0, guess_mode=False, return_dict=False)
    with parts.unet_image.attending(image_embeds):
        return parts.unet(z, timestep, encoder_hidden_states=prompt_embeds, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid, return_dict=False)[0]


def guided_eps(parts: SeeSRParts, z: Tensor, t: int, cond: Tensor, prompt_embeds: Tensor,
               negative_embeds: Tensor | None, image_embeds: Tensor, guidance: float) -> Tensor:
    """ε at ``t``, with classifier-free guidance when ``guidance > 1`` (pipeline_seesr.py:927): one batch of
    [negative; prompt] (:452, :1017; the condition and DAPE embeddings doubled, :453, :700-701), then
    ``uncond + guidance (text - uncond)`` (:1181-1183)."""
    n = z.shape[0]
    prompt_embeds = prompt_embeds.expand(n, -1, -1)
    image_embeds = image_embeds.expand(n, -1, -1)
    if guidance <= 1.0:
        return predict_eps(parts, z, t, cond, prompt_embeds, image_embeds)
    if negative_embeds is None:
        raise ConfigError("classifier-free guidance (guidance > 1) needs the negative prompt's embeddings")
    eps = predict_eps(parts, torch.cat([z, z]), t, torch.cat([cond, cond]),
                      torch.cat([negative_embeds.expand(n, -1, -1), prompt_embeds]),
                      torch.cat([image_embeds, image_embeds]))
    uncond, text = eps.chunk(2)
    return uncond + guidance * (text - uncond)


def decode(vae: Any, z: Tensor) -> Tensor:
    """``vae.decode(z / scaling_factor)`` (pipeline_seesr.py:1205), clamped to [-1, 1] (the image processor's
    ``(x / 2 + 0.5).clamp(0, 1)`` in tadsr's range)."""
    return vae.decode(z / vae.config.scaling_factor, return_dict=False)[0].clamp(-1, 1)


# --- the DDPM sampler -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DDPMConfig:
    """What SeeSR's DDPM sampler reads of ``DDPMScheduler``'s config."""

    num_train_timesteps: int
    timestep_spacing: str
    steps_offset: int

    @classmethod
    def of(cls, scheduler: Any) -> DDPMConfig:
        """The config of a diffusers DDPMScheduler, refused (ConfigError) where it asks for what ``ddpm_step``
        does not do: SeeSR's is SD-2-base's (epsilon, fixed_small, no clipping or thresholding)."""
        c = scheduler.config
        unsupported = {"prediction_type": (c.get("prediction_type", "epsilon"), "epsilon"),
                       "variance_type": (c.get("variance_type", "fixed_small"), "fixed_small"),
                       "clip_sample": (bool(c.get("clip_sample", True)), False),
                       "thresholding": (bool(c.get("thresholding", False)), False)}
        for key, (value, wanted) in unsupported.items():
            if value != wanted:
                raise ConfigError(f"scheduler config {key} = {value!r}: SeeSR's sampler runs {wanted!r} only")
        spacing = c.get("timestep_spacing", "leading")
        if spacing not in ("leading", "trailing", "linspace"):
            raise ConfigError(f"scheduler config timestep_spacing = {spacing!r}: not leading, trailing or linspace")
        return cls(int(c["num_train_timesteps"]), spacing, int(c.get("steps_offset", 0)))


def ddpm_timesteps(config: DDPMConfig, steps: int) -> list[int]:
    """DDPMScheduler.set_timesteps (diffusers 0.21 scheduling_ddpm.py:256-273), descending."""
    n = config.num_train_timesteps
    if not 1 <= steps <= n:
        raise ConfigError(f"steps must be from 1 to {n}, got {steps}")
    if config.timestep_spacing == "linspace":
        ts = [round(v) for v in torch.linspace(0, n - 1, steps, dtype=torch.float64).flip(0).tolist()]
    elif config.timestep_spacing == "leading":
        ratio = n // steps
        ts = [i * ratio + config.steps_offset for i in range(steps)][::-1]
    else:
        ratio = n / steps
        ts = [int(round(v)) - 1 for v in torch.arange(n, 0, -ratio, dtype=torch.float64).tolist()]
    return [int(t) for t in ts]


def ddpm_step(alphas_cumprod: Tensor, eps: Tensor, t: int, prev_t: int, z: Tensor, noise: Tensor | None) -> Tensor:
    """DDPMScheduler.step, epsilon prediction, fixed_small variance (diffusers 0.21 scheduling_ddpm.py:388-449,
    ``_get_variance`` :282-300), in its order of operations on float32 scalars: x0 = (z - sqrt(1 - ab_t) eps) /
    sqrt(ab_t); mean = sqrt(ab_prev) beta_t / (1 - ab_t) x0 + sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t) z; plus
    sqrt(max(var, 1e-20)) noise when t > 0 (``noise`` is then required)."""
    acp = alphas_cumprod.to(torch.float32).cpu()
    one = torch.tensor(1.0)
    ab_t = acp[t]
    ab_prev = acp[prev_t] if prev_t >= 0 else one
    beta_prod_t, beta_prod_prev = 1 - ab_t, 1 - ab_prev
    alpha_t = ab_t / ab_prev
    beta_t = 1 - alpha_t
    x0 = (z - beta_prod_t.to(z.device) ** 0.5 * eps) / ab_t.to(z.device) ** 0.5
    x0_coeff = (ab_prev ** 0.5 * beta_t) / beta_prod_t
    z_coeff = alpha_t ** 0.5 * beta_prod_prev / beta_prod_t
    prev = x0_coeff.to(z.device) * x0 + z_coeff.to(z.device) * z
    if t > 0:
        if noise is None:
            raise ValueError(f"the DDPM step at t = {t} needs a noise draw")
        variance = torch.clamp((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev), min=1e-20)
        prev = prev + (variance.to(z.device) ** 0.5) * noise.to(z)
    return prev


def _alphas(parts: SeeSRParts) -> Tensor:
    return parts.scheduler.alphas_cumprod


def start_latent(parts: SeeSRParts, cond: Tensor, posterior_noise: Tensor, start_noise: Tensor,
                 t: int = START_TIMESTEP) -> Tensor:
    """The LR latent noised to ``t`` (pipeline_seesr.py:988-993)."""
    return add_noise(_alphas(parts), encode_lr(parts.vae, cond, posterior_noise), start_noise, t)


@torch.no_grad()
def tad_seesr_latents(parts: SeeSRParts, lr: Tensor, *, posterior_noise: Tensor, start_noise: Tensor,
                      prompt_embeds: Tensor, image_embeds: Tensor, timestep: int = ONE_STEP_TIMESTEP) -> Tensor:
    """TAD-SeeSR's one step to the clean latent: the start latent at ``timestep`` (999), ε without guidance,
    ``(z - sqrt(1 - ab) eps) / sqrt(ab)`` (TAD-SR utils/scheduling_ddpm.py ``get_z0``). ``lr`` is the condition
    image (``prepare_lr``'s output, (N, 3, H, W) in [0, 1], H and W multiples of 8); the noises are (N, C, H / 8,
    W / 8); the embeddings (1 or N, L, D) and (1 or N, K, 512)."""
    z = start_latent(parts, lr, posterior_noise, start_noise, timestep)
    return one_step_z0(parts, z, guided_eps(parts, z, timestep, lr, prompt_embeds, None, image_embeds, 0.0), timestep)


def tad_seesr_one_step(parts: SeeSRParts, lr: Tensor, *, posterior_noise: Tensor, start_noise: Tensor,
                       prompt_embeds: Tensor, image_embeds: Tensor, timestep: int = ONE_STEP_TIMESTEP) -> Tensor:
    """TAD-SeeSR: ``tad_seesr_latents`` decoded -> (N, 3, H, W) in [-1, 1] (no colour fix: ``adain_color_fix``)."""
    z0 = tad_seesr_latents(parts, lr, posterior_noise=posterior_noise, start_noise=start_noise,
                           prompt_embeds=prompt_embeds, image_embeds=image_embeds, timestep=timestep)
    with torch.no_grad():
        return decode(parts.vae, z0)


@torch.no_grad()
def seesr_latents(parts: SeeSRParts, lr: Tensor, *, steps: int, guidance: float, prompt_embeds: Tensor,
                  negative_embeds: Tensor | None, image_embeds: Tensor, posterior_noise: Tensor, start_noise: Tensor,
                  step_noises: Tensor | Sequence[Tensor] | None) -> Tensor:
    """SeeSR's sampler to the final latent: the start latent at 999, then ``steps`` DDPM steps on the scheduler's
    timesteps (``ddpm_timesteps``; timesteps above 999 skipped, pipeline_seesr.py:1011-1014), each with ε guided
    by ``guidance`` against ``negative_embeds`` and the i-th of ``step_noises`` ((steps, N, C, h, w); an entry is
    used only where its timestep is above 0). Inputs as ``tad_seesr_latents``."""
    z = start_latent(parts, lr, posterior_noise, start_noise)
    return ddpm_loop(parts, z, lambda z_t, t: guided_eps(parts, z_t, t, lr, prompt_embeds, negative_embeds,
                                                         image_embeds, guidance), steps, step_noises)


EpsFn = Callable[[Tensor, int], Tensor]  # (z_t, t) -> ε: the whole latent's (``guided_eps``) or tiled (``tiled_eps``)


def run_timesteps(parts: SeeSRParts, steps: int) -> list[int]:
    """The timesteps SeeSR's loop runs: the scheduler's (``ddpm_timesteps``) not above 999 (pipeline_seesr.py:
    1011-1014)."""
    return [t for t in ddpm_timesteps(DDPMConfig.of(parts.scheduler), steps) if t <= START_TIMESTEP]


def ddpm_loop(parts: SeeSRParts, z: Tensor, eps: EpsFn, steps: int,
              step_noises: Tensor | Sequence[Tensor] | None) -> Tensor:
    """SeeSR's loop from the start latent ``z``: for each of the scheduler's ``steps`` timesteps (those above 999
    skipped, pipeline_seesr.py:1011-1014) ``eps(z, t)`` and one DDPM step (``ddpm_step``) on the whole latent with
    the i-th of ``step_noises`` (:1188)."""
    config = DDPMConfig.of(parts.scheduler)
    ratio = config.num_train_timesteps // steps
    for i, t in enumerate(ddpm_timesteps(config, steps)):
        if t > START_TIMESTEP:
            continue
        noise = step_noises[i] if step_noises is not None and i < len(step_noises) else None
        z = ddpm_step(_alphas(parts), eps(z, t), t, t - ratio, z, noise)
    return z


def one_step_z0(parts: SeeSRParts, z: Tensor, eps: Tensor, timestep: int) -> Tensor:
    """TAD-SeeSR's clean latent ``(z - sqrt(1 - ab) eps) / sqrt(ab)`` (TAD-SR utils/scheduling_ddpm.py
    ``get_z0``)."""
    ab = _alpha_bar(_alphas(parts), timestep, z)
    return (z - (1 - ab) ** 0.5 * eps) / ab ** 0.5


def seesr_sample(parts: SeeSRParts, lr: Tensor, *, steps: int, guidance: float, prompt_embeds: Tensor,
                 negative_embeds: Tensor | None, image_embeds: Tensor, posterior_noise: Tensor, start_noise: Tensor,
                 step_noises: Tensor | Sequence[Tensor] | None) -> Tensor:
    """SeeSR: ``seesr_latents`` decoded -> (N, 3, H, W) in [-1, 1] (no colour fix: ``adain_color_fix``)."""
    z = seesr_latents(parts, lr, steps=steps, guidance=guidance, prompt_embeds=prompt_embeds,
                      negative_embeds=negative_embeds, image_embeds=image_embeds, posterior_noise=posterior_noise,
                      start_noise=start_noise, step_noises=step_noises)
    with torch.no_grad():
        return decode(parts.vae, z)


# --- 7. colour -----------------------------------------------------------------------------------------------------

def adain_color_fix(content: Tensor, style: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """SeeSR's AdaIN fix of (N, 3, H, W) images in [0, 1] (utils/wavelet_color_fix.py ``calc_mean_std`` /
    ``adaptive_instance_normalization``, then ``clamp_(0, 1)``): per channel, std = sqrt(unbiased var + eps).
    (``tadsr.inference.color.adain_color_fix`` differs: it adds eps to the std.)"""
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]

    s_mean, s_std = stats(style)
    c_mean, c_std = stats(content)
    return ((content - c_mean) / c_std * s_std + s_mean).clamp(0, 1)


# --- latent tiling -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LatentTiling:
    """How the sampler tiles a large latent (``tiled_eps``, ``tiled_latents``): ``tile`` x ``tile`` latents
    overlapping by ``overlap`` (the official ``--latent_tiled_size`` 96 and ``--latent_tiled_overlap`` 4,
    test_seesr.py:258-259), ``batch_size`` tiles per network call; the VAE's tiles (``tadsr.seesr.tiled_vae``)
    cover the same area: encoder tiles of 8 ``tile`` pixels overlapping by 8 ``overlap``, decoder tiles of ``tile``
    latents overlapping by ``overlap`` (at least 1), their GroupNorm statistics by ``vae_stats`` ("estimate", the
    default, or "exact": ``tiled_vae``'s docstring). ``tile`` 0: nothing tiled."""

    tile: int
    overlap: int
    batch_size: int = 1
    vae_stats: StatsMethod = DEFAULT_STATS

    def __post_init__(self) -> None:
        if self.vae_stats not in STATS_METHODS:
            raise ConfigError(f"vae_stats must be one of {', '.join(STATS_METHODS)}, got {self.vae_stats!r}")
        if self.tile < 0 or self.overlap < 0 or self.batch_size < 1:
            raise ConfigError(f"latent tiling: tile {self.tile} and overlap {self.overlap} must be >= 0 and the "
                              f"batch size {self.batch_size} >= 1")
        if self.tile and self.overlap * 2 > self.tile:
            raise ConfigError(f"latent tiling: overlap {self.overlap} must be at most half the tile {self.tile}")

    def fits(self, height: int, width: int) -> bool:
        """Whether a latent of height x width runs untiled (``tile`` 0, or within one tile)."""
        return self.tile == 0 or (height <= self.tile and width <= self.tile)

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(y, x, h, w) of the tiles over a latent of height x width (``tadsr.inference.tiling.tile_starts``: starts
        ``tile - overlap`` apart, the last flush with the edge, as the official grid, pipeline_seesr.py:1067-1097)."""
        th, tw = min(self.tile, height), min(self.tile, width)
        return [(y, x, th, tw) for y in tile_starts(height, th, self.overlap) for x in tile_starts(width, tw,
                                                                                                   self.overlap)]

    @property
    def encoder(self) -> tuple[int, int]:
        """The VAE encoder's (tile, overlap) in image pixels (``tiled_vae.vae_tiles``)."""
        return vae_tiles(self.tile, self.overlap)[0]

    @property
    def decoder(self) -> tuple[int, int]:
        """The VAE decoder's (tile, overlap) in latents (``tiled_vae.vae_tiles``)."""
        return vae_tiles(self.tile, self.overlap)[1]


def tiled_eps(parts: SeeSRParts, z: Tensor, t: int, cond: Tensor, prompt_embeds: Tensor,
              negative_embeds: Tensor | None, image_embeds: Tensor, guidance: float, tiling: LatentTiling,
              on_tile: Callable[[int], None] | None = None) -> Tensor:
    """ε of a latent ``z`` (N, C, h, w) tile by tile (pipeline_seesr.py:1062-1177): every tile's ``guided_eps`` on
    its slice of ``z`` and of the condition ``cond`` (N, 3, 8 h, 8 w), ``tiling.batch_size`` tiles per call (the
    embeddings (1, L, D) and (1, K, 512), shared), blended with raised-cosine ramps over the overlaps
    (``tadsr.inference.tiling.blend_ramp``) and normalised by the summed weights. The official weights every tile
    by a Gaussian (σ = 0.1 tile, ``_gaussian_weights`` :763-778), which in effect also crossfades within the
    overlaps only (at a tile's edge it is exp(-12.5), 4e-6, of its peak, and the sum is normalised); the ramps do
    it with a partition of unity and give a tile's interior its own ε exactly. Guidance is linear, so combining per
    tile (here) equals the official's combining after the blend. ``on_tile(n)`` after each batch of n tiles. A latent
    within one tile: ``guided_eps``, untiled."""
    h, w = z.shape[-2:]
    if tiling.fits(h, w):
        out = guided_eps(parts, z, t, cond, prompt_embeds, negative_embeds, image_embeds, guidance)
        if on_tile is not None:
            on_tile(1)
        return out
    boxes = tiling.boxes(h, w)
    n = z.shape[0]
    acc = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
    weight = torch.zeros(1, 1, h, w, dtype=torch.float32, device=z.device)
    f = cond.shape[-1] // w  # image pixels per latent (8)
    for first in range(0, len(boxes), tiling.batch_size):
        batch = boxes[first:first + tiling.batch_size]
        z_tiles = torch.cat([z[..., y:y + th, x:x + tw] for y, x, th, tw in batch])  # (B N, C, th, tw)
        cond_tiles = torch.cat([cond[..., f * y:f * (y + th), f * x:f * (x + tw)] for y, x, th, tw in batch])
        eps = guided_eps(parts, z_tiles, t, cond_tiles, prompt_embeds, negative_embeds, image_embeds, guidance)
        for k, (y, x, th, tw) in enumerate(batch):
            w2 = (blend_ramp(th, tiling.overlap, y > 0, y + th < h)[:, None]
                  * blend_ramp(tw, tiling.overlap, x > 0, x + tw < w)[None, :]).to(z.device)
            acc[..., y:y + th, x:x + tw] += eps[k * n:(k + 1) * n].float() * w2
            weight[..., y:y + th, x:x + tw] += w2
        if on_tile is not None:
            on_tile(len(batch))
    return (acc / weight).to(z.dtype)


def encode_lr_tiled(vae: Any, cond: Tensor, posterior_noise: Tensor, tiling: LatentTiling) -> Tensor:
    """``encode_lr`` through the tiled VAE (``tiled_vae.tiled_encode`` with ``tiling.encoder``); within one
    encoder tile, or ``tile`` 0, the same computation as ``encode_lr``."""
    tile, overlap = tiling.encoder if tiling.tile else (0, 0)
    mean, std = tiled_encode(vae, cond * 2 - 1, tile=tile, overlap=overlap, stats=tiling.vae_stats)
    return (mean + std * posterior_noise.to(mean)) * vae.config.scaling_factor


def decode_tiled(vae: Any, z: Tensor, tiling: LatentTiling) -> Tensor:
    """``decode`` through the tiled VAE (``tiled_vae.tiled_decode`` with ``tiling.decoder``), clamped to [-1, 1];
    within one decoder tile, or ``tile`` 0, ``decode``."""
    tile, overlap = tiling.decoder if tiling.tile else (0, 0)
    return tiled_decode(vae, z / vae.config.scaling_factor, tile=tile, overlap=overlap,
                        stats=tiling.vae_stats).clamp(-1, 1)


@torch.no_grad()
def tiled_latents(parts: SeeSRParts, cond: Tensor, *, variant: Variant, steps: int, guidance: float,
                  prompt_embeds: Tensor, negative_embeds: Tensor | None, image_embeds: Tensor, noise: Tensor,
                  tiling: LatentTiling, timestep: int = ONE_STEP_TIMESTEP,
                  on_tile: Callable[[int], None] | None = None) -> Tensor:
    """The final latent of either variant with the official latent tiling: the whole image encoded once (tiled
    VAE) to its posterior sample with ``noise[0]``, noised to the start timestep with ``noise[1]``; then at EVERY
    step ε tile by tile (``tiled_eps``) and one step on the whole latent: TAD-SeeSR ``one_step_z0`` at
    ``timestep``, SeeSR ``ddpm_loop`` with ``noise[2:]``. ``noise`` (D, N, C, H / 8, W / 8) is one draw per image
    at the latent size, so a latent pixel gets the same noise whatever the tiling. ``cond`` (N, 3, H, W) in [0, 1];
    the embeddings as ``tad_seesr_latents``. Untiled (``tiling.tile`` 0, or a latent within one tile everywhere)
    the same computation as ``tad_seesr_latents`` / ``seesr_latents``."""
    t_start = timestep if variant == "tad-seesr" else START_TIMESTEP
    z = add_noise(_alphas(parts), encode_lr_tiled(parts.vae, cond, noise[0], tiling), noise[1], t_start)

    def eps(z_t: Tensor, t: int) -> Tensor:
        return tiled_eps(parts, z_t, t, cond, prompt_embeds, negative_embeds, image_embeds, guidance, tiling,
                         on_tile)

    if variant == "tad-seesr":
        return one_step_z0(parts, z, eps(z, timestep), timestep)
    return ddpm_loop(parts, z, eps, steps, noise[2:])


# --- the Backend ---------------------------------------------------------------------------------------------------

@dataclass
class _ImageCondition:
    """What ``SeeSRBackend.begin_image`` computes once per image."""

    image_embeds: Tensor
    prompt_embeds: Tensor
    negative_embeds: Tensor | None
    prompt: str


class SeeSRBackend:
    """SeeSR or TAD-SeeSR on loaded parts as a tadsr ``Backend`` (``tadsr.inference.backend``), for the tiler.

    Geometry: ``scale`` 4 (the x4 bicubic condition, decoded by the VAE's x8 from a latent at LR / 2);
    ``size_multiple`` 2 (so that 4 x the LR is a multiple of 8, test_seesr.py:206's floor is then a no-op);
    ``noise_factor`` 2: every draw is at the LATENT size, LR / 2 (of the enlarged LR under the short-side rule).
    ``draw_noise``: (D, 1, 4, h / 2, w / 2), draw 0 the posterior sample's noise, 1 the start noise, 2.. the DDPM
    steps' (SeeSR only): one draw per image, so a latent pixel gets the same noise whatever the tiling.

    Per image (``begin_image``, which ``tiled_super_resolve`` calls once with the whole unpadded LR): DAPE's
    embeddings and tags of the whole image (as test_seesr.py:184 computes them once from the whole LR), the
    prompt (``seesr_prompt(tags, added_prompt, user_prompt)``; ``tags`` given replaces DAPE's, "" for none) and
    its text embeddings, and the negative prompt's when guided. A ``run`` without ``begin_image`` conditions on
    its own first tile.

    Per image, the computation (``run``: whole; ``run_tiled``: tiled in latent space): the condition
    (``prepare_lr`` in float: Pillow's bicubic without 8-bit rounding, the short-side rule when ``process_size``),
    the variant's sampler (TAD-SeeSR: one step at 999, no guidance; SeeSR: ``steps`` DDPM steps with guidance
    ``guidance``), then, when ``color_fix``, SeeSR's AdaIN against the condition (the official default,
    ``--align_method adain``), then the resize back to 4 x the LR (``finish_size``; a no-op without the rule).
    Untiled (``run``; the tiler's tile 0) a TAD-SeeSR run is the official pipeline's computation on the float
    condition (``tests/test_seesr_pipeline.py``).

    Tiling (``run_tiled``, which ``tiled_super_resolve`` calls with the WHOLE padded image and its whole noise
    whenever a tile is asked, instead of cutting the image into pixel tiles): the official per-step latent tiling
    (pipeline_seesr.py:1062-1177; ``tiled_latents``): the whole image's latent encoded once through the tiled VAE
    (``tadsr.seesr.tiled_vae``: shared GroupNorm statistics, bounded memory), then at every step ε computed per
    latent tile (ControlNet + UNet on the tile's latent and its slice of the condition) and blended with
    raised-cosine ramps (``tiled_eps``), one step on the whole latent, and the tiled VAE decode. The tiler's ``tile``
    and ``overlap`` are LR pixels (of the LR after the short-side rule): latent tiles of ``tile / 2`` latents
    overlapping by ``ceil(overlap / 2)``, ``batch_size`` tiles per network call (the official 96-latent tiles
    overlapping by 4 are ``--tile 192 --tile-overlap 8``); the VAE's tiles cover the same area (``LatentTiling``),
    their GroupNorm statistics by ``vae_stats`` ("estimate" or "exact", ``tadsr.seesr.tiled_vae``).
    An image whose latent fits one tile runs exactly as ``run``. Progress: one unit per latent tile and step
    (``progress(done, total)``, total = tiles x steps run).

    Short-side rule (test_seesr.py:195-206, ``process_size``; None: the folder's, ``SeeSRSettings.process_size``,
    512 as the official scripts; 0 leaves it out: ``processing_sizes``):
    an LR with a side under ``process_size // 4`` (the official 512 // 4 = 128) is enlarged (Pillow's bicubic) so
    that its short side is that, before the x4; the output is resized back to 4 x the (padded) LR at the end
    (test_seesr.py:233-234), so the output size is the tiler's. The noise is then drawn at the enlarged latent's
    size. Every call then gets the whole image (``run`` untiled, ``run_tiled`` tiled), so the rule applies to the
    image, never to a pixel tile.

    Precision: ``dtype`` float16 / bfloat16 runs the networks under autocast (weights stay float32), DAPE and
    the text encoder in float32 (as the official scripts run DAPE). Errors of diffusers / transformers are one
    ``BackendError`` naming ``name`` (``foreign_runtime``); non-finite output too (``check_output``).
    """

    scale = UPSCALE
    size_multiple = 2
    noise_factor = 2

    def __init__(self, parts: SeeSRParts, *, variant: Variant | None = None, steps: int | None = None,
                 guidance: float | None = None, added_prompt: str | None = None, user_prompt: str = "",
                 negative_prompt: str | None = None, tags: str | None = None, color_fix: bool = True,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 name: str | None = None, process_size: int | None = None,
                 vae_stats: StatsMethod = DEFAULT_STATS) -> None:
        settings = parts.settings
        process_size = settings.process_size if process_size is None else process_size
        if process_size < 0:
            raise ConfigError(f"process_size must be >= 0 (0: no short-side rule), got {process_size}")
        self.process_size = process_size
        if vae_stats not in STATS_METHODS:
            raise ConfigError(f"vae_stats must be one of {', '.join(STATS_METHODS)}, got {vae_stats!r}")
        self.vae_stats: StatsMethod = vae_stats
        self.parts = parts
        self.variant: Variant = variant or settings.variant
        if self.variant not in ("seesr", "tad-seesr"):
            raise ConfigError(f"variant must be 'seesr' or 'tad-seesr', got {self.variant!r}")
        self.steps = 1 if self.variant == "tad-seesr" else (settings.steps if steps is None else steps)
        if self.variant == "tad-seesr" and steps not in (None, 1):
            raise ConfigError(f"TAD-SeeSR runs one step; steps {steps} asked")
        if self.variant == "tad-seesr" and (guidance is not None or negative_prompt is not None):
            raise ConfigError("TAD-SeeSR runs one step without classifier-free guidance; it takes no guidance nor "
                              "negative prompt")
        self.guidance = 0.0 if self.variant == "tad-seesr" else float(
            settings.guidance if guidance is None else guidance)
        if not math.isfinite(self.guidance):
            raise ConfigError(f"guidance must be a finite number, got {self.guidance}")
        if self.variant == "seesr":  # the scheduler's config and the steps checked now, not at the first tile
            ddpm_timesteps(DDPMConfig.of(parts.scheduler), self.steps)
        self.timestep = settings.timestep
        self.added_prompt = settings.prompt if added_prompt is None else added_prompt
        self.user_prompt = user_prompt
        self.negative_prompt = settings.negative_prompt if negative_prompt is None else negative_prompt
        self.tags = tags
        self.color_fix = color_fix
        self.dtype = dtype or torch.float32
        self.name = name or str(parts.folder)
        target = resolve_device(device) if device is not None else next(parts.unet.parameters()).device
        for module in (parts.unet, parts.controlnet, parts.vae, parts.text_encoder, parts.dape):
            module.to(target)
        self._condition: _ImageCondition | None = None
        self.last_prompt: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parts.unet.parameters()).device

    @property
    def latent_channels(self) -> int:
        return int(self.parts.vae.config.latent_channels)

    @property
    def draws(self) -> int:
        """Noise draws per image: posterior, start, then one per DDPM step (SeeSR)."""
        return 2 + (self.steps if self.variant == "seesr" else 0)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The latent's (h, w) for an LR of height x width: its condition's (``processing_sizes``, with the
        short-side rule when ``process_size``) / 8; (height / 2, width / 2) without the rule."""
        h, w = processing_sizes(height, width, self.process_size, self.scale)[2]
        return h // LATENT_ALIGN, w // LATENT_ALIGN

    def draw_noise(self, height: int, width: int, seed: int) -> Tensor:
        """(draws, 1, latent_channels, *latent_size) standard normal from ``seed`` on the CPU, one draw after the
        other from one generator (draw 0 the posterior's, 1 the start's: the same whatever the steps)."""
        gen = torch.Generator().manual_seed(seed)
        shape = (1, self.latent_channels, *self.latent_size(height, width))
        return torch.stack([torch.randn(shape, generator=gen) for _ in range(self.draws)])

    def begin_image(self, lr: Tensor) -> None:
        """Condition the next ``run`` calls on one whole LR image (1, 3, h, w) in [-1, 1] (class docstring)."""
        from tadsr.sd.diffusers_teacher import foreign_runtime

        with foreign_runtime(self.name):
            self._condition = self._image_condition(lr)

    @torch.no_grad()
    def _image_condition(self, lr: Tensor) -> _ImageCondition:
        parts = self.parts
        lr01 = ((lr[:1].to(self.device, torch.float32) + 1) / 2).clamp(0, 1)
        image_embeds, tags = parts.dape(lr01)
        prompt = seesr_prompt(tags[0] if self.tags is None else self.tags, self.added_prompt, self.user_prompt)
        prompt_embeds = encode_text(parts.text_encoder, parts.tokenizer, prompt)
        negative = encode_text(parts.text_encoder, parts.tokenizer, self.negative_prompt) \
            if self.guidance > 1.0 else None
        self.last_prompt = prompt
        return _ImageCondition(image_embeds, prompt_embeds, negative, prompt)

    def run(self, lr: Tensor, noise: Tensor) -> Tensor:
        """LR images (N, 3, h, w) in [-1, 1] and their noise (draws, N, 4, *latent_size) -> (N, 3, 4 h, 4 w) in
        [-1, 1], untiled."""
        from tadsr.sd.diffusers_teacher import check_output, foreign_runtime

        with foreign_runtime(self.name):
            out = self._run(lr, noise, None, None)
        return check_output(self.name, out)

    def run_tiled(self, lr: Tensor, noise: Tensor, *, tile: int, overlap: int, batch_size: int = 1,
                  progress: Callable[[int, int], None] | None = None) -> Tensor:
        """``run`` with the official per-step latent tiling (class docstring): the whole image (1, 3, h, w) and its
        whole noise; ``tile`` and ``overlap`` in LR pixels (``tile`` > 0), ``batch_size`` latent tiles per network
        call, ``progress(done, total)`` after each (total: latent tiles x steps)."""
        from tadsr.sd.diffusers_teacher import check_output, foreign_runtime

        f = self.noise_factor  # LR pixels per latent
        if tile <= 0:
            raise ConfigError(f"{self.name}: run_tiled needs a tile > 0, got {tile}")
        tiling = LatentTiling(max(1, tile // f), -(-overlap // f), batch_size, self.vae_stats)
        with foreign_runtime(self.name):
            out = self._run(lr, noise, tiling, progress)
        return check_output(self.name, out)

    @torch.no_grad()
    def _run(self, lr: Tensor, noise: Tensor, tiling: LatentTiling | None,
             progress: Callable[[int, int], None] | None) -> Tensor:
        if noise.shape[0] != self.draws:
            raise ConfigError(f"{self.name}: {noise.shape[0]} noise draws given, {self.draws} needed")
        condition = self._condition or self._image_condition(lr)
        lr01 = ((lr.to(self.device, torch.float32) + 1) / 2).clamp(0, 1)
        h, w = lr01.shape[-2:]
        cond = prepare_lr(lr01, process_size=self.process_size, scale=self.scale, quantize=False)
        noise = noise.to(self.device, torch.float32)
        with autocast(self.device, self.dtype):
            if tiling is not None:
                hr = decode_tiled(self.parts.vae, self._tiled_latents(cond, noise, condition, tiling, progress),
                                  tiling)
            elif self.variant == "tad-seesr":
                hr = tad_seesr_one_step(self.parts, cond, posterior_noise=noise[0], start_noise=noise[1],
                                        prompt_embeds=condition.prompt_embeds, image_embeds=condition.image_embeds,
                                        timestep=self.timestep)
            else:
                hr = seesr_sample(self.parts, cond, steps=self.steps, guidance=self.guidance,
                                  prompt_embeds=condition.prompt_embeds, negative_embeds=condition.negative_embeds,
                                  image_embeds=condition.image_embeds, posterior_noise=noise[0],
                                  start_noise=noise[1], step_noises=noise[2:])
        hr01 = (hr.float() + 1) / 2
        if self.color_fix:
            hr01 = adain_color_fix(hr01, cond)
        return finish_size(hr01, (h, w), self.scale) * 2 - 1

    def _tiled_latents(self, cond: Tensor, noise: Tensor, condition: _ImageCondition, tiling: LatentTiling,
                       progress: Callable[[int, int], None] | None) -> Tensor:
        """``tiled_latents`` with this backend's settings, counting latent tiles x steps for ``progress``."""
        latent = (cond.shape[-2] // LATENT_ALIGN, cond.shape[-1] // LATENT_ALIGN)
        tiles = 1 if tiling.fits(*latent) else len(tiling.boxes(*latent))
        steps = 1 if self.variant == "tad-seesr" else len(run_timesteps(self.parts, self.steps))
        done = 0

        def on_tile(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, tiles * steps)

        return tiled_latents(self.parts, cond, variant=self.variant, steps=self.steps, guidance=self.guidance,
                             prompt_embeds=condition.prompt_embeds, negative_embeds=condition.negative_embeds,
                             image_embeds=condition.image_embeds, noise=noise, tiling=tiling,
                             timestep=self.timestep, on_tile=on_tile)
