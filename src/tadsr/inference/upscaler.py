"""``Upscaler``: super-resolution of whole images (numpy, PIL or ``ImageData``), tiled, with colour fix.

Handles what the network does not: bit depth (8/16), grayscale (replicated to RGB for the network, luma back),
alpha (upscaled with bicubic and re-attached), resizing to a requested ``outscale``, and CUDA out-of-memory (the
tile is halved and the image retried, with a warning).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from tadsr.bt601 import LUMA
from tadsr.checkpoints import is_sd_student
from tadsr.data.image_io import MIN_SIDE, ImageData, gray_to_rgb
from tadsr.devices import cpu_bf16_native, resolve_device
from tadsr.diffusion.samplers import SAMPLERS, SamplerName
from tadsr.errors import ConfigError
from tadsr.inference.color import COLOR_FIXES, ColorFix, color_fix
from tadsr.inference.fast import prepare_for_inference
from tadsr.inference.padding import round_up
from tadsr.inference.pipeline import resolve_steps, upsample_lr
from tadsr.inference.tiling import tiled_super_resolve
from tadsr.model import SRModel, load_model, resolve_model_path


@dataclass(frozen=True)
class UpscaleOptions:
    """How images are upscaled. ``tile``/``tile_overlap`` are LR pixels (tile 0 = whole image at once).

    ``sampler`` is the T-step sampler (``diffusion.samplers``): "deterministic" (Eq. 3, the default, the
    distillation target) or "stochastic" (Eq. 2, ResShift's ancestral sampler, its per-step noise drawn from
    ``seed``); one step is the same under both. ``channels_last`` and ``compile`` are the opt-in speed-ups of
    ``inference.fast.prepare_for_inference``.
    """

    tile: int = 128
    tile_overlap: int = 16
    steps: int | None = None
    sampler: SamplerName = "deterministic"
    seed: int = 0
    color_fix: ColorFix = "none"
    batch_size: int = 1
    outscale: float | None = None
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.tile < 0 or self.tile_overlap < 0 or self.batch_size < 1:
            raise ConfigError("tile and tile_overlap must be >= 0 and batch_size >= 1")
        if self.tile and self.tile_overlap * 2 > self.tile:
            raise ConfigError(f"tile_overlap {self.tile_overlap} must be at most half the tile {self.tile}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.color_fix not in COLOR_FIXES:
            raise ConfigError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")
        if self.outscale is not None and not self.outscale > 0:
            raise ConfigError(f"outscale must be positive, got {self.outscale}")


class Upscaler:
    """One-step (student) or N-step (teacher) super-resolution of images.

    ``dtype`` is the compute precision: float32, or float16 / bfloat16 under autocast (weights stay float32).
    """

    def __init__(self, model: SRModel, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 **options: Any) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu" and not cpu_bf16_native():
            warnings.warn("bf16 on this CPU is emulated (no AVX512-BF16, AMX or ARM BF16): slower than fp32",
                          RuntimeWarning, stacklevel=2)
        self.model = model.to(self.device).eval()
        self.options = UpscaleOptions(**options)
        prepare_for_inference(self.model, channels_last=self.options.channels_last, compile=self.options.compile)
        try:
            resolve_steps(model.config.role, model.config.schedule.num_steps, self.options.steps)
        except ValueError as err:
            raise ConfigError(f"{err} for this model") from None
        if model.config.role == "student" and self.options.steps not in (None, 1):
            raise ConfigError("a student model runs one step: use steps=1")

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, **options: Any) -> Upscaler:
        """Load a tadsr .safetensors file, an embedded model by name ("student", the default, or "teacher"), an
        ONNX file from `tadsr export` (run by onnxruntime on the CPU: ``OnnxUpscaler``; ``device`` and ``dtype`` are
        then the file's), or an SD-based student from `tadsr distill --teacher DIFFUSERS_DIR`
        (``tadsr.sd.student.SDStudentUpscaler``, float32)."""
        if str(path_or_name).lower().endswith(".onnx"):
            from tadsr.inference.onnx import OnnxUpscaler

            return OnnxUpscaler.from_file(path_or_name, **options)  # type: ignore[arg-type]
        path = resolve_model_path(path_or_name)
        if is_sd_student(path):  # the one-step student of an SD-based teacher (tadsr.sd.student)
            from tadsr.sd.student import SDStudentUpscaler

            return SDStudentUpscaler.from_file(path, device=device, **options)
        return cls(load_model(path), device=device, dtype=dtype, **options)

    @property
    def scale(self) -> int:
        return self.model.config.scale

    def upscale_tensor(self, lr: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(1, 3, h, w) in [-1, 1] -> (1, 3, h s, w s) in [-1, 1] at the model's native scale, colour-fixed."""
        opts = self.options
        lr = lr.to(self.device, torch.float32)
        out = self.network_upscale(lr, progress)
        if opts.color_fix != "none":
            out = color_fix(out, upsample_lr(lr, self.scale).clamp(-1, 1), opts.color_fix).clamp(-1, 1)
        return out

    def network_upscale(self, lr: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(1, 3, h, w) in [-1, 1] on the device -> (1, 3, h s, w s): the model, tiled; on CUDA out-of-memory the
        tile is halved and the image retried."""
        opts = self.options
        tile = opts.tile
        while True:
            try:
                return tiled_super_resolve(
                    self.model, lr, tile=tile, overlap=opts.tile_overlap, steps=opts.steps, seed=opts.seed,
                    sampler=opts.sampler,
                    autocast_dtype=None if self.dtype == torch.float32 else self.dtype,
                    batch_size=opts.batch_size, progress=progress,
                )
            except torch.cuda.OutOfMemoryError:
                multiple = self.model.config.lr_multiple
                current = tile or max(lr.shape[-2:])
                if current <= multiple:
                    raise
                tile = max(multiple, current // 2)
                warnings.warn(f"CUDA out of memory: retrying with tile {tile}", RuntimeWarning, stacklevel=2)
                torch.cuda.empty_cache()

    @property
    def size_multiple(self) -> int:
        """The LR size the network needs a multiple of (the model's ``lr_multiple``)."""
        return self.model.config.lr_multiple

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the LR image is reflect-padded to before the network: multiples of ``size_multiple``."""
        m = self.size_multiple
        return round_up(height, m), round_up(width, m)

    def tile_size(self) -> int:
        """The LR tile the model runs (``tile`` rounded up to ``size_multiple``; 0: the whole image)."""
        return round_up(self.options.tile, self.size_multiple)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the output for an input of height x width: the native scale, then ``outscale``."""
        if self.options.outscale is None:
            return height * self.scale, width * self.scale
        return max(1, round(height * self.options.outscale)), max(1, round(width * self.options.outscale))

    def upscale_image(self, image: ImageData, progress: Callable[[int, int], None] | None = None) -> ImageData:
        """Upscale pixels and keep bit depth, gray/colour, alpha; metadata is carried over."""
        pixels = image.pixels
        peak = 65535.0 if pixels.dtype == np.uint16 else 255.0
        data = pixels.astype(np.float32) / peak
        if data.ndim == 2:
            data = data[:, :, None]
        colour_channels = 1 if data.shape[2] in (1, 2) else 3
        alpha = data[:, :, colour_channels:]
        rgb = gray_to_rgb(data)[:, :, :3]
        lr = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None] * 2 - 1
        hr = self.upscale_tensor(lr, progress)
        out = ((hr[0].float().cpu().numpy().transpose(1, 2, 0) + 1) / 2).clip(0, 1)
        h, w = pixels.shape[:2]
        if alpha.shape[2]:  # alpha does not go through the network: bicubic to the native size
            alpha = cv2.resize(alpha, (w * self.scale, h * self.scale), interpolation=cv2.INTER_CUBIC)[:, :, None]
            out = np.concatenate([out, alpha.clip(0, 1)], axis=2)
        if self.options.outscale is not None:
            out_h, out_w = self.output_size(h, w)
            out = _resize(out, (out_w, out_h))
        if colour_channels == 1:
            out = np.concatenate([out[:, :, :3] @ np.array(LUMA, dtype=np.float32)[:, None], out[:, :, 3:]], axis=2)
        out = out.clip(0, 1)
        result = np.rint(out * peak).astype(pixels.dtype)
        return replace(image, pixels=result[:, :, 0] if result.shape[2] == 1 else result)

    def upscale(self, image: np.ndarray | Image.Image) -> np.ndarray | Image.Image:
        """Upscale a numpy (H, W[, C]) uint8/uint16 RGB(A) array or a PIL image; returns the same kind."""
        if isinstance(image, Image.Image):
            return _to_pil(self.upscale_image(ImageData(_from_pil(image))).pixels)
        if not isinstance(image, np.ndarray) or image.dtype not in (np.uint8, np.uint16):
            raise TypeError("upscale takes a uint8/uint16 numpy array (H, W[, C]) or a PIL image")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (2, 3, 4)):
            raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1..4, got {image.shape}")
        if min(image.shape[:2]) < MIN_SIDE:
            h, w = image.shape[:2]
            raise ValueError(f"image must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {w}x{h}")
        return self.upscale_image(ImageData(image)).pixels

    def upscale_batch(self, images: Sequence[np.ndarray | Image.Image]) -> list[np.ndarray | Image.Image]:
        """Upscale several images; each gets the same seed, so an image's result does not depend on the batch."""
        return [self.upscale(image) for image in images]


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """High-quality resize of a float (H, W[, C]) array to size (W, H): area when shrinking, Lanczos when growing."""
    shrink = size[0] * size[1] < array.shape[0] * array.shape[1]
    out = cv2.resize(array, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
    return out if out.ndim == array.ndim else out[:, :, None]  # OpenCV drops a single channel axis


def _from_pil(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    return np.asarray(image)


def _to_pil(pixels: np.ndarray) -> Image.Image:
    if pixels.dtype == np.uint16:
        if pixels.ndim != 2:
            raise ValueError("PIL holds 16-bit images only as grayscale; use numpy for 16-bit colour")
        return Image.fromarray(pixels)  # I;16
    return Image.fromarray(pixels)

