"""The diffusion SR pipeline: LR image -> bicubic x scale -> encode -> sample (T steps or one) -> decode -> clamp.

Images are (N, 3, H, W) tensors in [-1, 1]. Runs in float32 on CPU and, when ``autocast_dtype`` is given,
under autocast (float16 / bfloat16 on CUDA, bfloat16 on CPU). The LR image is reflect-padded to the size the
network needs and the output cropped back (docs/implementation-notes.md §5.1).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tadsr.devices import autocast
from tadsr.diffusion.samplers import SamplerName, sample
from tadsr.errors import ConfigError
from tadsr.inference.padding import crop_to, pad_to_multiple
from tadsr.model import SRModel
from tadsr.nets.autoencoder import FirstStage
from tadsr.nets.common import upsample_lr


def encode_lr(model: SRModel, lr: Tensor) -> Tensor:
    """z_y = E(bicubic_up(lr)): (N, 3, h, w) in [-1, 1] -> (N, C, h s / f, w s / f)."""
    return encode_upsampled(model.first_stage, lr, model.config.scale)


def encode_upsampled(first_stage: FirstStage, lr: Tensor, scale: int) -> Tensor:
    """``encode_lr`` for a bare first stage and scale."""
    return first_stage.encode(upsample_lr(lr, scale))


def step_choices(role: str, num_steps: int) -> tuple[int, ...]:
    """The step counts a model is run with, its default first: one step for a student (and for a one-step file:
    an exported graph, an SD student), T (``num_steps``) or one for a teacher. The one-step rule's one home."""
    return (1,) if role == "student" or num_steps == 1 else (num_steps, 1)


def check_steps(steps: int | None, role: str, num_steps: int, model: str) -> int:
    """``steps``, or the model's default (``step_choices``); a ConfigError naming ``model`` for a count it is not
    run with (a student's T included: the pipeline could run it, but the student was not trained for it)."""
    choices = step_choices(role, num_steps)
    if steps is None:
        return choices[0]
    if steps not in choices:
        raise ConfigError(f"{model} runs {' or '.join(map(str, choices))} steps, not {steps}"
                          + (" (a one step model: use steps=1)" if choices == (1,) else ""))
    return steps


def resolve_steps(role: str, num_steps: int, steps: int | None) -> int:
    """The network calls the pipeline makes: ``steps``, by default ``step_choices``' first. Only 1 (one call at
    t = T-1) and T (the full sampler) exist, for any role (``tadsr bench`` times a student's T); anything else is a
    ValueError."""
    if steps is None:
        return step_choices(role, num_steps)[0]
    if steps not in (1, num_steps):
        raise ValueError(f"steps must be 1 (one step) or {num_steps} (the schedule's T), got {steps}")
    return steps


@torch.inference_mode()
def super_resolve(
    model: SRModel,
    lr: Tensor,
    steps: int | None = None,
    sampler: SamplerName = "deterministic",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    output: Literal["image", "latent"] = "image",
    step_noise: Tensor | None = None,
) -> Tensor:
    """Super-resolve a batch of LR images.

    Args:
        model: teacher or student.
        lr: (N, 3, h, w) in [-1, 1]; any size (reflect-padded to ``model.config.lr_multiple``, cropped back).
        steps: 1 (one network call at t = T-1, the student's path) or T (full sampling); by default 1 for a
            student and T for a teacher (``model.config.role``).
        sampler: "deterministic" (Eq. 3) or "stochastic" (Eq. 2) for T-step sampling.
        noise: (N, C, H', W') prior noise for the *padded* latent; drawn from ``generator`` when None.
        generator: source of the prior noise (and of the stochastic sampler's per-step noise).
        autocast_dtype: float16 / bfloat16 to run under autocast; None for the model's own dtype.
        output: "image" (N, 3, h s, w s) clamped to [-1, 1], or "latent" (the sampled z_0 of the padded input).
        step_noise: (T-1, N, C, H', W') the stochastic sampler's per-step draws (``diffusion.samplers.sample``);
            drawn from ``generator`` when None.
    """
    cfg = model.config
    num_steps = cfg.schedule.num_steps
    steps = resolve_steps(cfg.role, num_steps, steps)
    if lr.dim() != 4 or lr.shape[1] != 3:
        raise ValueError(f"lr must be (N, 3, H, W), got {tuple(lr.shape)}")
    param = next(model.unet.parameters())
    lr = lr.to(device=param.device, dtype=param.dtype)
    padded, (h, w) = pad_to_multiple(lr, cfg.lr_multiple)
    with autocast(param.device, autocast_dtype):
        z_y = encode_lr(model, padded)
        z_0 = sample(model.denoiser, model.schedule, z_y, padded, noise=noise, sampler=sampler,
                     one_step=steps == 1 and num_steps > 1, generator=generator, step_noise=step_noise)
        if output == "latent":
            return z_0.float()
        hr = model.first_stage.decode(z_0)
    return crop_to(hr.float().clamp(-1, 1), (h * cfg.scale, w * cfg.scale))
