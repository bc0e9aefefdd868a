"""``Upscaler``: super-resolution of whole images (numpy, PIL or ``ImageData``) by any ``Backend``, tiled, with
colour fix.

Handles what the network does not: bit depth (8/16), grayscale (replicated to RGB for the network, luma back),
alpha (upscaled with bicubic and re-attached), resizing to a requested ``outscale``, and CUDA out-of-memory (the
tile is halved and the image retried, with a warning). The network is a ``Backend`` (``tadsr.inference.backend``):
a tadsr model, an exported ONNX graph, an SD student or a diffusers pipeline, opened from a path by
``tadsr.backends.open_model``::

    from tadsr.backends import open_model
    upscaler = Upscaler(open_model("student"), tile=256)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from PIL import Image

from tadsr.bt601 import LUMA
from tadsr.data.image_io import MIN_SIDE, ImageData, gray_to_rgb
from tadsr.errors import ConfigError
from tadsr.inference.backend import Backend, backend_name, fixed_tile
from tadsr.inference.color import COLOR_FIXES, ColorFix, color_fix
from tadsr.inference.padding import crop_to, pad_to_multiple, round_up
from tadsr.inference.pipeline import upsample_lr
from tadsr.inference.tiling import DEFAULT_TILE, DEFAULT_TILE_OVERLAP, tiled_super_resolve
from tadsr.limits import check_tile


@dataclass(frozen=True)
class UpscaleOptions:
    """How images are upscaled, whatever the backend. ``tile``/``tile_overlap`` are LR pixels (tile 0 = whole image
    at once); ``seed`` gives each image its noise (the same for every image); ``batch_size`` tiles go through the
    network together; ``outscale`` resizes the native-scale output (None: keep it)."""

    tile: int = DEFAULT_TILE
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    seed: int = 0
    color_fix: ColorFix = "none"
    batch_size: int = 1
    outscale: float | None = None

    def __post_init__(self) -> None:
        if self.tile < 0 or self.tile_overlap < 0 or self.batch_size < 1:
            raise ConfigError("tile and tile_overlap must be >= 0 and batch_size >= 1")
        if self.tile and self.tile_overlap * 2 > self.tile:
            raise ConfigError(f"tile_overlap {self.tile_overlap} must be at most half the tile {self.tile}")
        if self.color_fix not in COLOR_FIXES:
            raise ConfigError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")
        if self.outscale is not None and not self.outscale > 0:
            raise ConfigError(f"outscale must be positive, got {self.outscale}")


class Upscaler:
    """Super-resolution of images by ``backend`` (its steps, sampler, precision and device are the backend's:
    ``tadsr.backends.open_model``), with the image-level settings of ``UpscaleOptions``.

    ``tile``, ``tile_overlap`` and ``seed`` left at None are the defaults (``DEFAULT_TILE``,
    ``DEFAULT_TILE_OVERLAP``, 0); ``tile`` is at most ``tadsr.limits.MAX_TILE``. A fixed-size backend (``Backend``'s
    ``fixed_tile``: an ONNX file exported with ``--tile N``) runs N x N tiles with the noise of its own seed, so,
    here and nowhere else:

    * a ``seed`` other than its own is refused (ConfigError naming the file): its noise is embedded;
    * a ``tile`` other than N runs as N, said in one line to ``report`` (by default a warning);
    * its tiles overlap by ``tile_overlap`` up to a quarter of N: a larger one runs as N / 4 (rounded down), said
      in one line; left at None it is the default or N / 4, whichever is less, without a word.
    """

    def __init__(self, backend: Backend, *, tile: int | None = None, tile_overlap: int | None = None,
                 seed: int | None = None, color_fix: ColorFix = "none", batch_size: int = 1,
                 outscale: float | None = None, report: Callable[[str], None] | None = None) -> None:
        self.backend = backend
        if tile is not None:
            check_tile(tile, "--tile")
        fixed, fixed_seed = fixed_tile(backend)
        if fixed:
            tile, tile_overlap, seed = _fixed_settings(backend, fixed, fixed_seed, tile, tile_overlap, seed,
                                                       report or _warn)
        self.options = UpscaleOptions(tile=DEFAULT_TILE if tile is None else tile,
                                      tile_overlap=DEFAULT_TILE_OVERLAP if tile_overlap is None else tile_overlap,
                                      seed=0 if seed is None else seed, color_fix=color_fix, batch_size=batch_size,
                                      outscale=outscale)

    @property
    def scale(self) -> int:
        return self.backend.scale

    @property
    def size_multiple(self) -> int:
        """The LR size the network needs a multiple of (``Backend.size_multiple``)."""
        return self.backend.size_multiple

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def upscale_tensor(self, lr: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(1, 3, h, w) in [-1, 1] -> (1, 3, h s, w s) in [-1, 1] at the model's native scale, colour-fixed."""
        opts = self.options
        lr = lr.to(self.device, torch.float32)
        out = self.network_upscale(lr, progress)
        if opts.color_fix != "none":
            out = color_fix(out, upsample_lr(lr, self.scale).clamp(-1, 1), opts.color_fix).clamp(-1, 1)
        return out

    def network_upscale(self, lr: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(1, 3, h, w) in [-1, 1] on the device -> (1, 3, h s, w s): the backend, tiled; on CUDA out-of-memory the
        tile is halved and the image retried."""
        opts = self.options
        if fixed_tile(self.backend)[0]:
            return self._fixed_tiles(lr, progress)
        tile = opts.tile
        while True:
            try:
                return tiled_super_resolve(self.backend, lr, tile=tile, overlap=opts.tile_overlap, seed=opts.seed,
                                           batch_size=opts.batch_size, progress=progress)
            except torch.cuda.OutOfMemoryError:
                multiple = self.size_multiple
                current = tile or max(lr.shape[-2:])
                if current <= multiple:
                    raise
                tile = max(multiple, current // 2)
                warnings.warn(f"CUDA out of memory: retrying with tile {tile}", RuntimeWarning, stacklevel=2)
                torch.cuda.empty_cache()

    def _fixed_tiles(self, lr: torch.Tensor, progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """A backend of one input size (``Backend``'s ``fixed_tile``): every tile exactly that size (the image
        reflect-padded up to it where smaller), the backend's own noise (``fixed_seed``), the overlap of
        ``_fixed_settings``."""
        tile, seed = fixed_tile(self.backend)
        h, w = lr.shape[-2:]
        padded = lr if (h >= tile and w >= tile) else pad_to_multiple(lr, tile)[0]
        out = tiled_super_resolve(self.backend, padded, tile=tile, overlap=self.options.tile_overlap, seed=seed,
                                  batch_size=self.options.batch_size, progress=progress)
        return crop_to(out, (h * self.scale, w * self.scale))

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the LR image is reflect-padded to before the network: multiples of ``size_multiple``."""
        m = self.size_multiple
        return round_up(height, m), round_up(width, m)

    def tile_size(self) -> int:
        """The LR tile the network runs (``tile`` rounded up to ``size_multiple``; 0: the whole image; a fixed-size
        backend's own size)."""
        return fixed_tile(self.backend)[0] or round_up(self.options.tile, self.size_multiple)

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


def _fixed_settings(backend: Backend, fixed: int, fixed_seed: int, tile: int | None, overlap: int | None,
                    seed: int | None, report: Callable[[str], None]) -> tuple[int, int, int]:
    """(tile, overlap, seed) a fixed-size backend runs for those asked (``Upscaler``'s rule, its docstring)."""
    name = backend_name(backend)
    if seed is not None and seed != fixed_seed:
        raise ConfigError(f"{name}: seed {seed} cannot apply: a fixed-size file runs the noise of seed {fixed_seed}, "
                          f"embedded when it was exported (leave the seed out or give {fixed_seed}, or export it "
                          f"again with --seed {seed})")
    if tile is not None and tile != fixed:
        report(f"{name}: tile {tile} runs as {fixed}: a fixed-size file runs {fixed}x{fixed} tiles only")
    cap = fixed // 4
    if overlap is None:
        overlap = min(DEFAULT_TILE_OVERLAP, cap)
    elif overlap > cap:
        report(f"{name}: tile overlap {overlap} runs as {cap}, a quarter of its {fixed}x{fixed} tile")
        overlap = cap
    return fixed, overlap, fixed_seed


def _warn(line: str) -> None:
    warnings.warn(line, UserWarning, stacklevel=4)


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

