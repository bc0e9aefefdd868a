"""Named presets of the official networks and schedules: explicit factories, no registry.

Public API (stable; external checks call these names):

* ``build_unet(name)`` for ``"realsr-x4"`` (resshift_realsrx4_s15_v1/v2) and ``"faceir"`` (resshift_faceir_s4);
* ``build_autoencoder(name)`` for ``"vq-f4"`` (autoencoder_vq_f4.pth) and ``"vq-f8-face"``
  (ffhq512_vq_f8_dim8_face.pth);
* ``build_schedule(name)`` for ``"realsr-x4-v1"`` (T=15, kappa 2, p 0.3, min_noise_level 0.04, sqrt(eta_T) 0.99)
  and ``"faceir"`` (T=4, min_noise_level 0.2, ResShift-HEAD sqrt(eta_1) = 0.1, the schedule the released face
  teacher was trained with) or ``"faceir-tadsr"`` (the TAD-SR code's sqrt(eta_1) = sqrt(0.001) cap).
"""

from __future__ import annotations

from dataclasses import replace

from tadsr.config import ModelConfig, Role
from tadsr.diffusion.schedule import Schedule, ScheduleConfig
from tadsr.errors import ConfigError
from tadsr.nets.autoencoder import PixelUnshuffleConfig, VQAutoencoder, VQConfig
from tadsr.nets.unet import SwinUNet, UNetConfig

UNET_PRESETS = ("realsr-x4", "faceir")
AUTOENCODER_PRESETS = ("vq-f4", "vq-f8-face")
SCHEDULE_PRESETS = ("realsr-x4-v1", "faceir", "faceir-tadsr")


def unet_config(name: str) -> UNetConfig:
    """The UNetConfig of a named official network (docs/implementation-notes.md §3.1)."""
    if name == "realsr-x4":
        return UNetConfig()
    if name == "faceir":
        return UNetConfig(in_channels=8, out_channels=8, lq_size=512)
    raise ConfigError(f"unknown UNet preset {name!r}; choose from {', '.join(UNET_PRESETS)}")


def autoencoder_config(name: str) -> VQConfig:
    """The VQConfig of a named official autoencoder (docs/implementation-notes.md §3.2)."""
    if name == "vq-f4":
        return VQConfig()
    if name == "vq-f8-face":
        return VQConfig(embed_dim=8, n_embed=4096, z_channels=8, resolution=512, ch=64, ch_mult=(1, 2, 4, 8),
                        num_res_blocks=(1, 2, 3, 4))
    raise ConfigError(f"unknown autoencoder preset {name!r}; choose from {', '.join(AUTOENCODER_PRESETS)}")


def schedule_config(name: str) -> ScheduleConfig:
    """The ScheduleConfig of a named official schedule (docs/implementation-notes.md §1.1, §4.9 item 3)."""
    if name == "realsr-x4-v1":
        return ScheduleConfig(num_steps=15, kappa=2.0, power=0.3, min_noise_level=0.04, etas_end=0.99)
    if name == "faceir":
        return ScheduleConfig(num_steps=4, kappa=2.0, power=0.3, min_noise_level=0.2, etas_end=0.99)
    if name == "faceir-tadsr":
        return ScheduleConfig(num_steps=4, kappa=2.0, power=0.3, min_noise_level=0.2, etas_end=0.99,
                              eta_start_rule="sinsr")
    raise ConfigError(f"unknown schedule preset {name!r}; choose from {', '.join(SCHEDULE_PRESETS)}")


def build_unet(name: str) -> SwinUNet:
    return SwinUNet(unet_config(name))


def build_autoencoder(name: str) -> VQAutoencoder:
    return VQAutoencoder(autoencoder_config(name))


def build_schedule(name: str) -> Schedule:
    return Schedule(schedule_config(name))


MODEL_PRESETS = ("realsr-x4", "faceir")  # the official architectures (`tadsr convert`); model_config also has "tiny"


def tiny_model_config() -> ModelConfig:
    """A small x4 model for CPUs: 16x16 latent windows on the lossless pixel-unshuffle stage (48 channels).

    The UNet predicts x0-hat - z_y (``ModelConfig.predict_residual``): it starts as the bicubic image, which a
    network trained for CPU-hours instead of GPU-days needs to keep bicubic's fidelity.
    """
    unet = UNetConfig(image_size=16, in_channels=48, out_channels=48, model_channels=64, channel_mult=(1, 2),
                      num_res_blocks=(1, 1), attention_resolutions=(16, 8), num_head_channels=32, swin_embed_dim=64,
                      window_size=8, lq_size=16)
    return ModelConfig(unet=unet, first_stage=PixelUnshuffleConfig(factor=4), schedule=ScheduleConfig(num_steps=15),
                       scale=4, predict_residual=True)


def model_config(name: str, schedule: str | None = None, role: Role = "teacher") -> ModelConfig:
    """A whole model: the official ``"realsr-x4"`` (Swin-UNet + VQ-f4, T=15, x4) or ``"faceir"`` (+ VQ-f8, T=4,
    x1), or ``"tiny"`` (``tiny_model_config``, the embedded models' architecture).

    ``schedule`` overrides the schedule preset (e.g. ``"faceir-tadsr"``).
    """
    if name == "tiny":
        tiny = tiny_model_config()
        return replace(tiny, schedule=schedule_config(schedule), role=role) if schedule else replace(tiny, role=role)
    if name == "realsr-x4":
        parts = ("realsr-x4", "vq-f4", schedule or "realsr-x4-v1", 4)
    elif name == "faceir":
        parts = ("faceir", "vq-f8-face", schedule or "faceir", 1)
    else:
        raise ConfigError(f"unknown model preset {name!r}; choose from {', '.join(MODEL_PRESETS)}")
    unet, ae, sched, scale = parts
    return ModelConfig(unet_config(unet), autoencoder_config(ae), schedule_config(sched), scale=scale, role=role)
