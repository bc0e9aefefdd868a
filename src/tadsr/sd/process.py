"""The VP latent process of an SD-based teacher as a ``TeacherProcess`` (paper Appendix B), and its one-step student.

The teacher is a ``StableDiffusionUpscalePipeline``-style UNet: input the latent z_t and the (noised) LR image
concatenated, the prompt embedding as cross-attention context and the LR image's noise level as class labels.
``SDCondition`` carries that conditioning. The process (``tadsr.diffusion.vp``):

* forward: z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps (DDPM);
* x0_hat(z_t, t, y) from the UNet's eps- or v-prediction;
* eps from an x0 (HSD's direction, written once in ``tadsr.losses.score``);
* encoder features: the outputs of the UNet's down blocks at (z_t, t) (the time-aware discriminator's input, as the
  ResShift teacher's encoder features are; Eq. 9-10).

The student is a copy of the teacher's UNet called once at ``t_student`` on pure noise z_T (``student_x0``); its
prediction turned into x0_hat is its output (TAD-SR's one step, Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from tadsr.diffusion.vp import to_eps, to_x0, vp_forward


class SDCondition(NamedTuple):
    """The UNet's conditioning: the noised LR image (N, 3, h, w) in [-1, 1], its noise level (N,) int64 and the
    prompt embedding (N, L, D)."""

    image: Tensor
    level: Tensor
    context: Tensor


def noised_condition(low_res_scheduler: Any, lr: Tensor, lr_noise: Tensor, noise_level: int,
                     prompt_embeds: Tensor) -> SDCondition:
    """The UNet's conditioning for (N, 3, h, w) LR images in [-1, 1]: the LR image noised to ``noise_level`` with
    ``lr_noise`` by the low-res scheduler, the level, the prompt embedding (1, L, D) repeated per image."""
    device, n = prompt_embeds.device, lr.shape[0]
    lr = lr.to(device, prompt_embeds.dtype)
    level = torch.full((n,), noise_level, dtype=torch.long, device=device)
    image = low_res_scheduler.add_noise(lr, lr_noise.to(lr), level[:1])
    return SDCondition(image, level, prompt_embeds.expand(n, -1, -1))


def decode_latents(vae: nn.Module, latents: Tensor) -> Tensor:
    """(N, C, h, w) scaled latents -> (N, 3, h s, w s) image in [-1, 1] (clamped) by the VAE's decoder."""
    return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0].clamp(-1, 1)


def vae_scale(vae: nn.Module) -> int:
    """The VAE decoder's upsampling: the model's scale (the latent is at the LR size)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def unet_multiple(unet: nn.Module) -> int:
    """The UNet's downsampling: the LR size must be a multiple of it."""
    return 2 ** (len(unet.config.block_out_channels) - 1)


def unet_x0(unet: nn.Module, alphas_cumprod: Tensor, prediction: str, z_t: Tensor, t: Tensor,
            cond: SDCondition) -> Tensor:
    """x0_hat of ``unet`` at (z_t, t) under ``cond`` (its eps- or v-prediction converted: ``tadsr.diffusion.vp``)."""
    x = torch.cat([z_t, cond.image.to(z_t.dtype)], dim=1)
    out = unet(x, t, encoder_hidden_states=cond.context, class_labels=cond.level, return_dict=False)[0]
    return to_x0(alphas_cumprod, z_t, t, out.to(z_t.dtype), prediction)  # type: ignore[arg-type]


class _Enough(Exception):
    pass


def down_block_outputs(unet: nn.Module, forward: Callable[[], Any]) -> list[Any]:
    """What each of ``unet``'s down blocks returns (diffusers: (hidden states, the block's skip activations)) while
    ``forward()`` calls the UNet; the call stops after the last down block (its mid and up blocks never run)."""
    outputs: list[Any] = []
    blocks = list(unet.down_blocks)

    def keep(module: nn.Module, inputs: Any, output: Any) -> None:
        outputs.append(output)
        if module is blocks[-1]:
            raise _Enough

    hooks = [block.register_forward_hook(keep) for block in blocks]
    try:
        forward()
    except _Enough:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


class VPProcess:
    """``TeacherProcess`` for a VP teacher: a diffusers UNet, its scheduler's ``alphas_cumprod`` (T,) and prediction
    type (module docstring)."""

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor, prediction: str) -> None:
        self.unet, self.alphas_cumprod, self.prediction = unet, alphas_cumprod, prediction

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the down blocks' outputs (``encoder_features``)."""
        return list(self.unet.config.block_out_channels)

    def q_sample(self, z_0: Tensor, t: Tensor, noise: Tensor, cond: Any) -> Tensor:
        return vp_forward(self.alphas_cumprod, z_0, t, noise)

    def x0_hat(self, z_t: Tensor, t: Tensor, cond: SDCondition) -> Tensor:
        return unet_x0(self.unet, self.alphas_cumprod, self.prediction, z_t, t, cond)

    def to_eps(self, z_t: Tensor, x0: Tensor, t: Tensor, cond: Any) -> Tensor:
        return to_eps(self.alphas_cumprod, z_t, t, x0)

    def encoder_features(self, z_t: Tensor, t: Tensor, cond: SDCondition) -> list[Tensor]:
        """The down blocks' outputs (N, C_k, h_k, w_k), one per block: the UNet runs up to its last down block."""
        outputs = down_block_outputs(self.unet, lambda: self.x0_hat(z_t, t, cond))
        return [output[0] if isinstance(output, tuple) else output for output in outputs]
