"""Datasets of (HR, LR) pairs: HR images degraded on the fly, or existing LR/HR folders paired by name.

Samples are dicts ``{"gt": (3, S, S), "lq": (3, S / scale, S / scale), "name": str}`` in [-1, 1] (the range the
networks use, docs/implementation-notes.md §1.5). Every random draw of a sample (crop, flip, degradation) comes from one
generator seeded from (seed, epoch, index), so a sample does not depend on the worker that makes it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tadsr.data.degradation import DegradationConfig, degrade, draw_params
from tadsr.data.image_io import DEFAULT_MAX_PIXELS, READ_EXTENSIONS, ImageError, gray_to_rgb, read_image
from tadsr.data.kernels import draw_uniform
from tadsr.errors import ConfigError, NotFoundError


def sample_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator for one sample, seeded from (seed, *keys) through numpy's SeedSequence (well mixed)."""
    hi, lo = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(hi) << 31) ^ int(lo))


def list_images(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files of a folder (recursive, sorted), of a text file list (one path per line), or a given list."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READ_EXTENSIONS)
        if path.is_file() and path.suffix.lower() == ".txt":
            lines = [line.strip() for line in path.read_text().splitlines()]
            return [Path(line) if Path(line).is_absolute() else path.parent / line for line in lines if line]
        raise NotFoundError(f"{path}: not a folder or a .txt file list")
    return [Path(p) for p in source]


def pair_by_name(first: Path, second: Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Images of two folders paired by relative path without extension (never by sorted order):
    (pairs, names only in ``first``, names only in ``second``)."""
    def keyed(folder: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for path in list_images(folder):
            name = path.relative_to(folder).with_suffix("").as_posix()
            if name in out:
                raise ConfigError(f"{out[name]} and {path}: two images with the same name; pairing by name needs "
                                  "one (rename or remove one)")
            out[name] = path
        return out

    a, b = keyed(first), keyed(second)
    pairs = [(name, a[name], b[name]) for name in sorted(a.keys() & b.keys())]
    return pairs, sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())


def load_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, dtype: type = np.float32) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] of any readable image (gray replicated, alpha dropped, 16-bit kept), as ``dtype``."""
    pixels = read_image(path, max_pixels=max_pixels).pixels
    peak = 65535.0 if pixels.dtype == np.uint16 else 255.0
    img = gray_to_rgb(pixels.astype(dtype) / peak)
    return np.ascontiguousarray(img[:, :, :3])


def square_crop_resize(img: np.ndarray, size: int, gen: torch.Generator | None) -> np.ndarray:
    """Crop a square of side min(H, W) (random with ``gen``, centred without) and resize it to ``size``.

    Area interpolation when shrinking (as ResShift's data pipeline, docs/implementation-notes.md §4.7), bicubic
    when enlarging (ours).
    """
    h, w = img.shape[:2]
    side = min(h, w)
    if gen is None:
        top, left = (h - side) // 2, (w - side) // 2
    else:
        top = int(torch.randint(h - side + 1, (), generator=gen))
        left = int(torch.randint(w - side + 1, (), generator=gen))
    crop = img[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_CUBIC)


def first_readable(files: list[Path], index: int, bad_files: set[Path],
                   read: Callable[[Path], np.ndarray]) -> tuple[Path, np.ndarray]:
    """``read`` of file ``index``, or of the next readable one: a file that fails is added to ``bad_files`` and
    reported once (a warning naming it)."""
    for k in range(len(files)):
        path = files[(index + k) % len(files)]
        if path in bad_files:
            continue
        try:
            return path, read(path)
        except ImageError as err:
            bad_files.add(path)
            warnings.warn(f"{err}; skipped", RuntimeWarning, stacklevel=4)
    raise NotFoundError("no readable image left in the dataset")


def to_chw_tensor(img: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class EpochDataset(Dataset):
    """Images degraded on the fly, one sample per file and epoch; subclasses define ``sample(index, epoch)``, a pure
    function of (seed, epoch, index). Holds the file list, the current epoch and the files found unreadable."""

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], degradation: DegradationConfig,
                 gt_size: int) -> None:
        self.files = list_images(source)
        if not self.files:
            raise NotFoundError(f"{source}: no images found")
        if gt_size % degradation.scale:
            raise ConfigError(f"gt_size {gt_size} must be a multiple of the scale {degradation.scale}")
        self.degradation, self.gt_size = degradation, gt_size
        self.epoch = 0
        self.bad_files: set[Path] = set()

    def set_epoch(self, epoch: int) -> None:
        """Draw new crops and degradations for a new epoch (same seed -> same epochs)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, self.epoch)

    def sample(self, index: int, epoch: int) -> dict:
        raise NotImplementedError


class DegradedImageDataset(EpochDataset):
    """HR images -> (gt, lq) pairs made on the fly by a degradation pipeline.

    ``source``: a folder (recursive), a .txt list of paths, or a list of paths. GT: a square crop of side
    min(H, W) resized to ``gt_size`` (random crop and horizontal flip when ``augment``), then degraded.
    An unreadable file is reported once (a warning naming it) and replaced by the next readable one.
    """

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], degradation: DegradationConfig,
                 gt_size: int = 256, seed: int = 0, augment: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(source, degradation, gt_size)
        self.seed, self.augment, self.max_pixels = seed, augment, max_pixels

    def _read(self, index: int) -> tuple[Path, np.ndarray]:
        return first_readable(self.files, index, self.bad_files, lambda path: load_rgb(path, self.max_pixels))

    def sample(self, index: int, epoch: int) -> dict:
        """The pair of file ``index`` in ``epoch``: a pure function of (seed, epoch, index)."""
        gen = sample_generator(self.seed, epoch, index)
        path, img = self._read(index)
        gt = square_crop_resize(img, self.gt_size, gen if self.augment else None)
        if self.augment and draw_uniform(gen, 0, 1) < 0.5:
            gt = gt[:, ::-1]
        params = draw_params(self.degradation, gen)
        hr, lr = degrade(self.degradation, to_chw_tensor(gt)[None], [params])
        return {"gt": hr[0] * 2 - 1, "lq": lr[0] * 2 - 1, "name": path.stem}


class PairedImageDataset(Dataset):
    """Existing LR and HR folders, paired by relative path without extension (never by sorted order).

    Unpaired files are reported in one warning per folder. With ``gt_size``, a random aligned crop of that size
    (and the matching LR crop) is taken; else whole images.
    """

    def __init__(self, lq_dir: str | os.PathLike, gt_dir: str | os.PathLike, scale: int = 4,
                 gt_size: int | None = None, seed: int = 0) -> None:
        lq_dir, gt_dir = Path(lq_dir), Path(gt_dir)
        self.pairs, only_lq, only_gt = pair_by_name(lq_dir, gt_dir)
        for folder, only in ((lq_dir, only_lq), (gt_dir, only_gt)):
            if only:
                shown = ", ".join(only[:5]) + (f", ... ({len(only) - 5} more)" if len(only) > 5 else "")
                warnings.warn(f"{folder}: {len(only)} file(s) without a partner: {shown}", RuntimeWarning,
                              stacklevel=2)
        if not self.pairs:
            raise NotFoundError(f"{lq_dir} and {gt_dir}: no file names in common")
        self.scale, self.gt_size, self.seed = scale, gt_size, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        name, lq_path, gt_path = self.pairs[index]
        lq, gt = load_rgb(lq_path), load_rgb(gt_path)
        s = self.scale
        if gt.shape[0] != lq.shape[0] * s or gt.shape[1] != lq.shape[1] * s:
            raise ImageError(f"{gt_path}: size {gt.shape[1]}x{gt.shape[0]} is not {s}x that of {lq_path} "
                             f"({lq.shape[1]}x{lq.shape[0]})")
        if self.gt_size is not None:
            gen = sample_generator(self.seed, index)
            lq_size = self.gt_size // s
            top = int(torch.randint(lq.shape[0] - lq_size + 1, (), generator=gen))
            left = int(torch.randint(lq.shape[1] - lq_size + 1, (), generator=gen))
            lq = lq[top:top + lq_size, left:left + lq_size]
            gt = gt[top * s:(top + lq_size) * s, left * s:(left + lq_size) * s]
        return {"gt": to_chw_tensor(gt) * 2 - 1, "lq": to_chw_tensor(lq) * 2 - 1, "name": name}
