"""Synthetic degradations that make (HR, LR) training and test pairs (docs/implementation-notes.md §4.7, §6).

Pipelines, each a frozen config dataclass:

* ``RealESRGANConfig``: the second-order Real-ESRGAN model (Wang et al. 2021, §3): stage 1 = blur -> random resize
  -> Gaussian or Poisson noise -> JPEG; with ``second_order_prob`` stage 2 = blur (``blur_prob``) -> resize ->
  noise; then the final part: [resize to HR/scale + sinc -> JPEG] or [JPEG -> resize + sinc], 50/50, its JPEG
  quality from ``final_jpeg_range`` (applied whether or not the second stage runs, as in the reference pipelines).
  One ``StageConfig`` describes either stage.
* ``FaceConfig``: the GFPGAN face model: blur (41x41) -> bilinear down -> Gaussian noise -> JPEG -> bilinear up.
* ``BicubicConfig``: plain bicubic downscaling (antialiased).

Randomness: ``draw_params(config, generator)`` draws every choice of one sample into a small JSON-able record
(noise fields get a seed), and ``degrade(config, hr, params)`` applies records with pure tensor functions, so a seed
gives the same pair bit for bit and a record can be saved and replayed. Images are (N, 3, H, W) float in [0, 1];
the output is rounded to 8-bit levels. Works on CPU (data-loader workers) and CUDA; JPEG runs through OpenCV on
the CPU in both cases.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tadsr.bt601 import LUMA
from tadsr.data.kernels import KernelConfig, KernelParams, draw_choice, draw_final_sinc, draw_kernel, draw_uniform
from tadsr.errors import ConfigError

RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class StageConfig:
    """One degradation stage: blur, resize (up / down / keep), noise, and the JPEG that closes the stage.

    Noise sigma is in 8-bit levels; ``gaussian_noise_prob`` picks Gaussian over Poisson noise. ``jpeg_range``: the
    JPEG that closes stage 1; stage 2 has none of its own (the final JPEG closes it), but a quality is still drawn
    for it (unused), so that a seed gives the pairs it always gave.
    """

    kernel: KernelConfig = field(default_factory=KernelConfig)
    blur_prob: float = 1.0
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)


@dataclass(frozen=True)
class RealESRGANConfig:
    scale: int = 4
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=StageConfig)
    second_order_prob: float = 0.5
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = (3, 5, 7, 9, 11, 13, 15, 17, 19)
    final_jpeg_range: tuple[float, float] = (30.0, 95.0)


@dataclass(frozen=True)
class FaceConfig:
    """GFPGAN-style face degradation at scale 1 (the LR is brought back to the HR size)."""

    kernel_size: int = 41
    aniso_prob: float = 0.5
    sigma: tuple[float, float] = (0.1, 15.0)
    downsample_range: tuple[float, float] = (0.8, 32.0)
    noise_range: tuple[float, float] = (0.0, 20.0)
    jpeg_range: tuple[float, float] = (30.0, 100.0)
    gray_prob: float = 0.01
    scale: int = 1


@dataclass(frozen=True)
class BicubicConfig:
    scale: int = 4


DegradationConfig = RealESRGANConfig | FaceConfig | BicubicConfig

# --- records ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseParams:
    kind: str  # "gaussian" (amount = sigma in 8-bit levels) or "poisson" (amount = scale)
    amount: float
    gray: bool
    seed: int


@dataclass(frozen=True)
class StageParams:
    kernel: KernelParams | None
    resize_scale: float
    resize_mode: str
    noise: NoiseParams
    jpeg_quality: float


@dataclass(frozen=True)
class RealESRGANParams:
    stage1: StageParams
    stage2: StageParams | None
    final_kernel: KernelParams
    final_mode: str
    final_jpeg_quality: float
    jpeg_first: bool


@dataclass(frozen=True)
class FaceParams:
    kernel: KernelParams
    downscale: float
    noise_sigma: float
    noise_seed: int
    jpeg_quality: float
    gray: bool


@dataclass(frozen=True)
class BicubicParams:
    pass


DegradationParams = RealESRGANParams | FaceParams | BicubicParams


def params_to_dict(params: DegradationParams) -> dict[str, Any]:
    """A JSON-able dict of a record, tagged with its type (``params_from_dict`` reverses it)."""
    return {"type": type(params).__name__, **asdict(params)}


def params_from_dict(data: dict[str, Any]) -> DegradationParams:
    """Rebuild a record saved by ``params_to_dict`` (e.g. from a test set's params.json), to replay it."""
    data = dict(data)
    kind = data.pop("type")

    def kernel(d: dict | None) -> KernelParams | None:
        return None if d is None else KernelParams(**d)

    def stage(d: dict | None) -> StageParams | None:
        if d is None:
            return None
        return StageParams(**{**d, "kernel": kernel(d["kernel"]), "noise": NoiseParams(**d["noise"])})

    if kind == "RealESRGANParams":
        return RealESRGANParams(**{**data, "stage1": stage(data["stage1"]), "stage2": stage(data["stage2"]),
                                   "final_kernel": kernel(data["final_kernel"])})
    if kind == "FaceParams":
        return FaceParams(**{**data, "kernel": kernel(data["kernel"])})
    if kind == "BicubicParams":
        return BicubicParams()
    raise ValueError(f"unknown degradation record type {kind!r}")


# --- drawing ------------------------------------------------------------------------------------------------


def _seed(gen: torch.Generator) -> int:
    return int(torch.randint(2**62, (), generator=gen).item())


def draw_stage(cfg: StageConfig, gen: torch.Generator) -> StageParams:
    """Draw every random choice of one stage."""
    kernel = draw_kernel(cfg.kernel, gen) if draw_uniform(gen, 0, 1) < cfg.blur_prob else None
    direction = draw_choice(gen, 3, cfg.resize_probs)  # 0 up, 1 down, 2 keep
    low, high = cfg.resize_range
    scale = draw_uniform(gen, 1, high) if direction == 0 else draw_uniform(gen, low, 1) if direction == 1 else 1.0
    mode = RESIZE_MODES[draw_choice(gen, 3)]
    if draw_uniform(gen, 0, 1) < cfg.gaussian_noise_prob:
        kind, amount = "gaussian", draw_uniform(gen, *cfg.noise_range)
    else:
        kind, amount = "poisson", draw_uniform(gen, *cfg.poisson_scale_range)
    noise = NoiseParams(kind, amount, draw_uniform(gen, 0, 1) < cfg.gray_noise_prob, _seed(gen))
    return StageParams(kernel, scale, mode, noise, draw_uniform(gen, *cfg.jpeg_range))


def draw_params(cfg: DegradationConfig, gen: torch.Generator) -> DegradationParams:
    """Draw one sample's degradation record from ``gen`` (use one generator per sample)."""
    if isinstance(cfg, RealESRGANConfig):
        stage1 = draw_stage(cfg.stage1, gen)
        stage2 = draw_stage(cfg.stage2, gen) if draw_uniform(gen, 0, 1) < cfg.second_order_prob else None
        final_kernel = draw_final_sinc(cfg.final_sinc_sizes, cfg.final_sinc_prob, gen)
        return RealESRGANParams(stage1, stage2, final_kernel, RESIZE_MODES[draw_choice(gen, 3)],
                                draw_uniform(gen, *cfg.final_jpeg_range), draw_uniform(gen, 0, 1) < 0.5)
    if isinstance(cfg, FaceConfig):
        sigma_x = draw_uniform(gen, *cfg.sigma)
        if draw_uniform(gen, 0, 1) < cfg.aniso_prob:
            kernel = KernelParams("aniso", cfg.kernel_size, sigma_x, draw_uniform(gen, *cfg.sigma),
                                  draw_uniform(gen, -math.pi, math.pi))
        else:
            kernel = KernelParams("iso", cfg.kernel_size, sigma_x)
        downscale, sigma = draw_uniform(gen, *cfg.downsample_range), draw_uniform(gen, *cfg.noise_range)
        return FaceParams(kernel, downscale, sigma, _seed(gen), draw_uniform(gen, *cfg.jpeg_range),
                          draw_uniform(gen, 0, 1) < cfg.gray_prob)
    if isinstance(cfg, BicubicConfig):
        return BicubicParams()
    raise TypeError(f"unknown degradation config {type(cfg).__name__}")


# --- pure operations on (1, 3, H, W) float images in [0, 1] ----------------------------------------------------


def filter2d(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve each channel with a (k, k) kernel, reflect padding (replicate where the image is too small)."""
    k = kernel.shape[-1]
    pad = k // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    weight = kernel.to(x).expand(x.shape[1], 1, k, k)
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode=mode), weight, groups=x.shape[1])


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    return F.interpolate(x, size=size, mode=mode, align_corners=None if mode == "area" else False)


def rgb_to_gray(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma, (N, 3, H, W) -> (N, 1, H, W)."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def add_noise(x: Tensor, p: NoiseParams) -> Tensor:
    """Gaussian (sigma / 255) or Poisson noise, gray (one field for all channels) or colour; clamped to [0, 1]."""
    gen = torch.Generator().manual_seed(p.seed)
    if p.kind == "gaussian":
        shape = (x.shape[0], 1 if p.gray else x.shape[1], *x.shape[2:])
        noise = torch.randn(shape, generator=gen, dtype=torch.float32).to(x) * (p.amount / 255)
    else:
        # Poisson noise on the image quantised to 8 bits, with as many photon levels as the next power of two
        # above its number of distinct values (Real-ESRGAN's generate_poisson_noise); then scaled.
        src = rgb_to_gray(x) if p.gray else x
        src = (src * 255).round().clamp(0, 255) / 255
        levels = 2 ** math.ceil(math.log2(max(2, len(torch.unique(src)))))
        counts = torch.poisson((src * levels).float().cpu(), generator=gen).to(x)
        noise = (counts / levels - src) * p.amount
    return (x + noise).clamp(0, 1)


def jpeg(x: Tensor, quality: float) -> Tensor:
    """JPEG round trip at integer quality round(quality), through OpenCV on the CPU; (1, 3, H, W) in [0, 1]."""
    img = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()[:, :, ::-1]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, int(round(quality))])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None].to(x) / 255


def quantize8(x: Tensor) -> Tensor:
    return (x * 255).round().clamp(0, 255) / 255


# --- pipelines ----------------------------------------------------------------------------------------------


def _stage(x: Tensor, p: StageParams, size: tuple[int, int]) -> Tensor:
    if p.kernel is not None:
        x = filter2d(x, p.kernel.build())
    return add_noise(resize(x, size, p.resize_mode), p.noise)


def degrade_realesrgan(cfg: RealESRGANConfig, hr: Tensor, p: RealESRGANParams) -> Tensor:
    """Second-order Real-ESRGAN degradation of one image (1, 3, H, W) -> (1, 3, H // s, W // s)."""
    h, w = hr.shape[-2:]
    s = cfg.scale
    out = _stage(hr, p.stage1, (int(h * p.stage1.resize_scale), int(w * p.stage1.resize_scale)))
    out = jpeg(out, p.stage1.jpeg_quality)
    if p.stage2 is not None:  # sizes relative to the LR size, as the reference pipeline does
        scale2 = p.stage2.resize_scale
        out = _stage(out, p.stage2, (int(h / s * scale2), int(w / s * scale2)))
    sinc = p.final_kernel.build()
    if p.jpeg_first:
        out = jpeg(out, p.final_jpeg_quality)
        out = filter2d(resize(out, (h // s, w // s), p.final_mode), sinc)
    else:
        out = filter2d(resize(out, (h // s, w // s), p.final_mode), sinc)
        out = jpeg(out, p.final_jpeg_quality)
    return quantize8(out)


def degrade_face(cfg: FaceConfig, hr: Tensor, p: FaceParams) -> tuple[Tensor, Tensor]:
    """GFPGAN-style degradation (1, 3, H, W) -> LR of the same size; returns (hr, lr): gray draws gray both."""
    h, w = hr.shape[-2:]
    out = filter2d(hr, p.kernel.build())
    out = resize(out, (int(h // p.downscale), int(w // p.downscale)), "bilinear")
    out = add_noise(out, NoiseParams("gaussian", p.noise_sigma, False, p.noise_seed))
    out = jpeg(out, p.jpeg_quality)
    out = resize(out, (h, w), "bilinear")
    if p.gray:
        out, hr = rgb_to_gray(out).expand_as(out), rgb_to_gray(hr).expand_as(hr)
    return hr, quantize8(out)


def degrade(cfg: DegradationConfig, hr: Tensor, params: list[DegradationParams]) -> tuple[Tensor, Tensor]:
    """Degrade a batch (N, 3, H, W) in [0, 1] with one record per sample; returns (hr, lr), both (N, 3, ., .)."""
    if hr.shape[0] != len(params):
        raise ValueError(f"{hr.shape[0]} images but {len(params)} parameter records")
    his, los = [], []
    for img, p in zip(hr.split(1), params, strict=True):
        if isinstance(cfg, RealESRGANConfig) and isinstance(p, RealESRGANParams):
            his.append(img)
            los.append(degrade_realesrgan(cfg, img, p))
        elif isinstance(cfg, FaceConfig) and isinstance(p, FaceParams):
            h, lo = degrade_face(cfg, img, p)
            his.append(h)
            los.append(lo)
        elif isinstance(cfg, BicubicConfig):
            his.append(img)
            lo = F.interpolate(img, scale_factor=1 / cfg.scale, mode="bicubic", align_corners=False, antialias=True)
            los.append(quantize8(lo))
        else:
            raise TypeError(f"parameter record {type(p).__name__} does not fit {type(cfg).__name__}")
    return torch.cat(his), torch.cat(los)


# --- presets ------------------------------------------------------------------------------------------------

PRESETS = ("realesrgan", "realesrgan-test", "realesrgan-mild", "bicubic", "face-gfpgan")


def preset(name: str) -> DegradationConfig:
    """Named degradations: ``realesrgan`` (training, docs/implementation-notes.md §4.7), ``realesrgan-test``
    (ImageNet-Test, §6), ``realesrgan-mild`` (ours: the test family with margins, for small models),
    ``bicubic`` (plain x4), ``face-gfpgan`` (faces, 512x512, scale 1)."""
    if name == "realesrgan":
        return RealESRGANConfig(
            stage1=StageConfig(kernel=KernelConfig(sizes=(3, 5, 7, 9, 11, 13, 15, 17, 19), sigma=(0.2, 3.0))),
            stage2=StageConfig(kernel=KernelConfig(sizes=(3, 5, 7, 9, 11, 13), sigma=(0.2, 1.5)), blur_prob=0.8,
                               resize_probs=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2), noise_range=(1.0, 25.0),
                               poisson_scale_range=(0.05, 2.5)),
            second_order_prob=0.5, final_sinc_prob=0.8, final_sinc_sizes=(3, 5, 7, 9, 11, 13, 15, 17, 19),
            final_jpeg_range=(30.0, 95.0))
    if name == "realesrgan-test":
        kernel = KernelConfig(sizes=(3, 5, 7, 9, 11), types=("iso", "aniso"), probs=(0.6, 0.4), sigma=(0.2, 0.8))
        return RealESRGANConfig(
            stage1=StageConfig(kernel=kernel, resize_range=(0.5, 1.5), noise_range=(1.0, 15.0),
                               poisson_scale_range=(0.05, 0.3), jpeg_range=(70.0, 95.0)),
            stage2=StageConfig(kernel=kernel), final_jpeg_range=(80.0, 100.0),
            second_order_prob=0.0, final_sinc_prob=0.2, final_sinc_sizes=(3, 5, 7, 9, 11))
    if name == "realesrgan-mild":
        # ours: the test family above with margins (blur, noise and JPEG a bit stronger, a second order at 20%),
        # for small models that cannot afford the full training range (the embedded pair, docs/model-card.md)
        kernel = KernelConfig(sizes=(3, 5, 7, 9, 11, 13, 15), types=("iso", "aniso"), probs=(0.6, 0.4),
                              sigma=(0.2, 1.5))
        return RealESRGANConfig(
            stage1=StageConfig(kernel=kernel, resize_range=(0.3, 1.5), noise_range=(1.0, 20.0),
                               poisson_scale_range=(0.05, 0.5), jpeg_range=(60.0, 95.0)),
            stage2=StageConfig(kernel=dataclasses.replace(kernel, sigma=(0.2, 1.0)), blur_prob=0.5,
                               resize_range=(0.5, 1.2), noise_range=(1.0, 10.0), poisson_scale_range=(0.05, 0.3)),
            second_order_prob=0.2, final_sinc_prob=0.3, final_sinc_sizes=(3, 5, 7, 9, 11, 13),
            final_jpeg_range=(70.0, 100.0))
    if name == "bicubic":
        return BicubicConfig()
    if name == "face-gfpgan":
        return FaceConfig()
    raise ConfigError(f"unknown degradation preset {name!r}; choose from {', '.join(PRESETS)}")
