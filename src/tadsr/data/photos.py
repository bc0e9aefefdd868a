"""Training crops cut from photos at their native resolution (multi-scale), each photo decoded once.

Large photos (4-16 MP) carry their fine texture only at full resolution: a crop of the whole photo resized to the
GT size is a thumbnail, 25-100x downscaled, with none of it. Here a sample is a random square of side
``gt_size / s`` of the native photo (``s ~ U[scale_range]``, default [0.25, 1]) area-resized to ``gt_size``, which
is the same as downscaling the whole photo by ``s`` and cropping (the DIV2K-style multi-scale augmentation of
EDSR and Real-ESRGAN), then one of the 8 flips/90-degree rotations and, with ``gray_prob``, a gray copy
(R = G = B, BT.601 luma), then the degradation. Every draw comes from the sample's own generator, seeded from
(seed, epoch, index), so a sample does not depend on the worker that makes it.

Texture-aware crops (``texture_ref`` > 0): random crops of wallpaper-like photos are mostly sky, bokeh and flat
walls (the median 64x64 crop of the embedded models' photos has a mean gradient of 1.5 levels of 255), which
teaches a model that bicubic is the answer. A candidate crop is kept with probability min(1, g / ``texture_ref``),
g its ``texture_score`` (the mean absolute finite difference of its BT.601 luma, in levels of 255), else another is
drawn, up to ``texture_tries`` candidates; when none is kept the most textured candidate is used. Flat crops are
down-weighted, not removed (the rule of "keep with probability rising with the gradient energy"), so a model still
sees sky.

Decoding a 16 MP JPEG costs about as much as a training step, so ``PhotoCache`` decodes each photo once into an
``.npy`` file (8- or 16-bit, (H, W, 3)) and maps it back read-only: a crop reads only its own pages, and data
workers share them through the page cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from tadsr.bt601 import LUMA
from tadsr.data.datasets import EpochDataset, first_readable, sample_generator, to_chw_tensor
from tadsr.data.degradation import DegradationConfig, degrade, draw_params
from tadsr.data.image_io import DEFAULT_MAX_PIXELS, ImageError, gray_to_rgb, read_image
from tadsr.data.kernels import draw_uniform
from tadsr.errors import ConfigError
from tadsr.fileio import atomic_write


class PhotoCache:
    """Decoded photos as ``.npy`` files in ``folder`` (one decode per photo, ever), read back memory-mapped.

    A file's entry is keyed by its resolved path, size and modification time, so an edited photo is decoded again.
    """

    def __init__(self, folder: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.folder, self.max_pixels = Path(folder), max_pixels
        self.decodes = 0  # photos decoded by this process (the rest came from the cache)
        self._open: dict[Path, np.ndarray] = {}

    def entry(self, path: Path) -> Path:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
        return self.folder / f"{path.stem[:40]}-{hashlib.sha256(key).hexdigest()[:16]}.npy"

    def get(self, path: str | os.PathLike) -> np.ndarray:
        """(H, W, 3) uint8 or uint16 RGB of ``path`` (gray replicated, alpha dropped); ImageError if unreadable."""
        path = Path(path)
        if path in self._open:
            return self._open[path]
        try:
            entry = self.entry(path)
        except OSError as err:
            raise ImageError(f"{path}: {err.strerror or err}") from err
        if not entry.is_file():
            self._write(entry, self._decode(path))
        img = np.load(entry, mmap_mode="r")
        self._open[path] = img
        return img

    def _decode(self, path: Path) -> np.ndarray:
        pixels = read_image(path, max_pixels=self.max_pixels).pixels
        self.decodes += 1
        return np.ascontiguousarray(gray_to_rgb(pixels)[:, :, :3])

    def _write(self, entry: Path, img: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
                np.save(f, img)

        atomic_write(entry, save)  # a concurrent reader sees no half-written entry


def draw_crop(height: int, width: int, gt_size: int, scale_range: tuple[float, float],
              gen: torch.Generator) -> tuple[int, int, int]:
    """(top, left, side) of a square whose area-resize to ``gt_size`` equals the photo downscaled by
    s ~ U[scale_range] and cropped; side = round(gt_size / s), at most the photo's short side."""
    s = draw_uniform(gen, *scale_range)
    side = min(round(gt_size / s), height, width)
    top = int(torch.randint(height - side + 1, (), generator=gen))
    left = int(torch.randint(width - side + 1, (), generator=gen))
    return top, left, side


def crop_to_float(img: np.ndarray, top: int, left: int, side: int, gt_size: int) -> np.ndarray:
    """The square (top, left, side) of ``img`` as float32 in [0, 1], area-resized to ``gt_size`` (bicubic when a
    photo smaller than ``gt_size`` must be enlarged)."""
    peak = 65535.0 if img.dtype == np.uint16 else 255.0
    crop = np.asarray(img[top:top + side, left:left + side], dtype=np.float32) / peak
    if side == gt_size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if side > gt_size else cv2.INTER_CUBIC
    return np.clip(cv2.resize(crop, (gt_size, gt_size), interpolation=interp), 0, 1)


def texture_score(img: np.ndarray) -> float:
    """Mean absolute horizontal and vertical finite difference of the BT.601 luma of an (H, W, 3) float image in
    [0, 1], in levels of 255: 0 for a flat crop, about 1.5 for the median crop of wallpapers, 10-20 for gravel."""
    y = img @ np.array(LUMA, dtype=img.dtype) * 255
    return float((np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean()) / 2)


def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square: ``k % 4`` quarter turns, mirrored when ``k >= 4``. (H, W, C)."""
    out = np.rot90(img, k % 4)
    return out[:, ::-1] if k >= 4 else out


def to_gray(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> the same shape with R = G = B = the BT.601 luma 0.299 R + 0.587 G + 0.114 B."""
    y = img @ np.array(LUMA, dtype=img.dtype)
    return np.repeat(y[:, :, None], 3, axis=2)


class PhotoCropDataset(EpochDataset):
    """Photos -> (gt, lq) pairs: native-resolution multi-scale crops (module docstring), degraded on the fly.

    Samples are dicts ``{"gt": (3, S, S), "lq": (3, S / scale, S / scale), "name": str}`` in [-1, 1]. Index k of
    an epoch uses photo ``k % len(files)``; each epoch draws new crops. An unreadable photo is reported once (a
    warning naming it) and replaced by the next readable one.
    """

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], degradation: DegradationConfig,
                 cache_dir: str | os.PathLike, gt_size: int = 256, scale_range: tuple[float, float] = (0.25, 1.0),
                 gray_prob: float = 0.0, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 texture_ref: float = 0.0, texture_tries: int = 8) -> None:
        super().__init__(source, degradation, gt_size)
        lo, hi = scale_range
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"scale_range {scale_range}: need 0 < low <= high <= 1")
        if not 0 <= gray_prob <= 1:
            raise ConfigError(f"gray_prob {gray_prob}: need a probability in [0, 1]")
        if texture_ref < 0 or texture_tries < 1:
            raise ConfigError(f"texture_ref {texture_ref}, texture_tries {texture_tries}: need >= 0 and >= 1")
        self.texture_ref, self.texture_tries = float(texture_ref), int(texture_tries)
        self.seed, self.scale_range, self.gray_prob = seed, (float(lo), float(hi)), gray_prob
        self.cache = PhotoCache(cache_dir, max_pixels)

    def gt_crop(self, index: int, epoch: int, gen: torch.Generator) -> tuple[Path, np.ndarray]:
        """The augmented GT crop (S, S, 3) float32 in [0, 1] of sample ``index``, drawing from ``gen``."""
        path, img = first_readable(self.files, index % len(self.files), self.bad_files, self.cache.get)
        crop = self._draw_textured(img, gen)
        gt = dihedral(crop, int(torch.randint(8, (), generator=gen)))
        if self.gray_prob > 0 and draw_uniform(gen, 0, 1) < self.gray_prob:
            gt = to_gray(gt)
        return path, np.ascontiguousarray(gt)

    def _draw_textured(self, img: np.ndarray, gen: torch.Generator) -> np.ndarray:
        """A crop (S, S, 3) float32 of ``img``: the first of up to ``texture_tries`` candidates kept by the texture
        rule (module docstring), else the most textured; with ``texture_ref`` 0, the first candidate."""
        best, best_score = None, -1.0
        for _ in range(self.texture_tries if self.texture_ref > 0 else 1):
            top, left, side = draw_crop(img.shape[0], img.shape[1], self.gt_size, self.scale_range, gen)
            crop = crop_to_float(img, top, left, side, self.gt_size)
            if self.texture_ref <= 0:
                return crop
            score = texture_score(crop)
            if draw_uniform(gen, 0, 1) < min(1.0, score / self.texture_ref):
                return crop
            if score > best_score:
                best, best_score = crop, score
        assert best is not None
        return best

    def sample(self, index: int, epoch: int) -> dict:
        """The pair of ``index`` in ``epoch``: a pure function of (seed, epoch, index)."""
        gen = sample_generator(self.seed, epoch, index)
        path, gt = self.gt_crop(index, epoch, gen)
        params = draw_params(self.degradation, gen)
        hr, lr = degrade(self.degradation, to_chw_tensor(gt)[None], [params])
        return {"gt": hr[0] * 2 - 1, "lq": lr[0] * 2 - 1, "name": path.stem}
