"""What ``tadsr serve`` does, without Gradio: the list of models, models opened once (per step count and sampler),
one upscale job, and the files a page session leaves behind. ``tadsr.web.page`` puts these on a page; the tests
call them directly.

A job is ``tadsr upscale`` for one file: the same reader and its limits (``image_io.read_image``: file size, then
width x height from the header, before anything is decoded), the same output-size bound
(``batch.check_output_size``), the same ``Upscaler`` and the same writer (``image_io.write_image``: 16-bit stays
16-bit, alpha and grayscale are kept, ICC and EXIF copied). The result is always a PNG. Two small 8-bit previews
(bicubic "before" and the result "after", at most ``PREVIEW_SIDE`` pixels on their longer side) feed the page's
comparison slider; the download is the full file.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from tadsr.backends import OWN_PRECISION, model_info, open_model
from tadsr.checkpoints import SEESR_INDEX, ModelKind
from tadsr.config import Role
from tadsr.data.image_io import DEFAULT_MAX_PIXELS, ImageData, ImageError, gray_to_rgb, read_image, to_8bit, write_image
from tadsr.diffusion.samplers import SAMPLERS, SamplerName
from tadsr.errors import ConfigError, NotFoundError, TadsrError, first_line
from tadsr.inference.backend import Backend
from tadsr.inference.batch import NAME_MAX, check_output_size
from tadsr.inference.color import COLOR_FIXES, ColorFix
from tadsr.inference.pipeline import check_steps, step_choices
from tadsr.inference.tiling import DEFAULT_TILE
from tadsr.inference.upscaler import Upscaler
from tadsr.model import EMBEDDED_NAMES, resolve_model_path

PREVIEW_SIDE = 2048  # the slider's images; the download is full size
MAX_AGE_SECONDS = 3600  # uploads and results older than this are deleted (and when their page is closed)


class Cancelled(TadsrError):
    """The user cancelled the job from the page."""


@dataclass(frozen=True)
class ModelEntry:
    """A model the page offers: its label in the list, its file, and what the step choices follow from (its
    ``tadsr.backends.ModelInfo``)."""

    label: str
    path: Path
    role: Role
    num_steps: int  # the steps it runs by default: a teacher's T, 1 for a one-step file
    scale: int
    kind: ModelKind

    @property
    def step_choices(self) -> list[int]:
        """1 for a student; T (the default) or 1 for a teacher (``inference.pipeline.step_choices``)."""
        return list(step_choices(self.role, self.num_steps))


def _entry(label: str, path: Path) -> ModelEntry:
    """The entry of a model file, from its metadata (``tadsr.backends.model_info``): weights load on first use."""
    info = model_info(path)
    return ModelEntry(label, path, info.role, info.num_steps, info.scale, info.kind)


def model_catalogue(model_paths: Sequence[str | os.PathLike] = (), models_dir: str | os.PathLike | None = None,
                    report: Callable[[str], None] | None = None) -> dict[str, ModelEntry]:
    """The models the page lists, by label: the embedded student and teacher, each of ``model_paths`` (a file or a
    model folder; an unusable one is an error: the user named it), and the ``*.safetensors`` and ``*.onnx``
    (`tadsr export`) files and the SeeSR folders (``tadsr convert seesr``) directly in ``models_dir`` (an unusable
    one is skipped with a line to ``report``). The page only ever sends a label back, never a path."""
    entries = [_entry(f"{name} (embedded)", resolve_model_path(name)) for name in EMBEDDED_NAMES]
    for path in map(Path, model_paths):
        if not path.exists():
            raise NotFoundError(f"{path}: no such model file or folder")
        entries.append(_entry(path.name, path))
    if models_dir is not None:
        folder = Path(models_dir)
        if not folder.is_dir():
            raise NotFoundError(f"{folder}: no such folder (--models-dir)")
        seesr = [index.parent for index in folder.glob(f"*/{SEESR_INDEX}")]
        for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*.onnx"), *seesr]):
            try:
                entries.append(_entry(path.name, path))
            except TadsrError as err:
                if report is not None:
                    report(f"{first_line(err)}; not listed")
    catalogue: dict[str, ModelEntry] = {}
    seen: set[Path] = set()
    for entry in entries:
        if entry.path.resolve() in seen:
            continue
        seen.add(entry.path.resolve())
        label = entry.label if entry.label not in catalogue else str(entry.path)  # two files of one name
        catalogue[label] = replace(entry, label=label)
    return catalogue


class ModelCache:
    """Each model is opened (``tadsr.backends.open_model``) on first use with the steps and sampler asked for, and
    kept on ``device``; ``lock`` lets one job at a time use the device. ``dtype`` is the compute precision of the
    tadsr models (an exported graph or an SD student runs at its own)."""

    def __init__(self, catalogue: dict[str, ModelEntry], device: torch.device, dtype: torch.dtype | None = None):
        self.catalogue = catalogue
        self.device = device
        self.dtype = dtype
        self.lock = threading.Lock()
        self._backends: dict[tuple[str, int, str], Backend] = {}

    def entry(self, label: str) -> ModelEntry:
        if label not in self.catalogue:
            raise ConfigError(f"unknown model {label!r}: choose one of {', '.join(self.catalogue)}")
        return self.catalogue[label]

    def backend(self, label: str, steps: int | None = None, sampler: SamplerName = "deterministic") -> Backend:
        """The label's model opened for ``steps`` (None: its default; a count it does not run is a ConfigError) and
        the T-step ``sampler`` (one step is the same under both), on first use; the same object afterwards."""
        entry = self.entry(label)
        steps = check_steps(steps, entry.role, entry.num_steps, entry.label)
        sampler = sampler if steps > 1 else "deterministic"
        key = (label, steps, sampler)
        if key not in self._backends:
            self._backends[key] = open_model(entry.path, device=self.device, steps=steps, sampler=sampler,
                                             dtype=self.dtype if entry.kind in OWN_PRECISION else None)
        return self._backends[key]

    def upscaler(self, label: str, *, steps: int | None = None, sampler: SamplerName = "deterministic",
                 tile: int = DEFAULT_TILE, seed: int = 0, color_fix: ColorFix = "none",
                 outscale: float | None = None) -> Upscaler:
        """An Upscaler of the label's model (``backend``) with the image-level settings of ``UpscaleOptions``."""
        return Upscaler(self.backend(label, steps, sampler), tile=tile, seed=seed, color_fix=color_fix,
                        outscale=outscale)


@dataclass(frozen=True)
class JobSettings:
    """The page's controls. ``steps`` None: the model's default; ``outscale`` None: the model's native scale;
    ``sampler``: the T-step sampler (``ModelBackend``'s; one step is the same under both)."""

    model: str
    steps: int | None = None
    seed: int = 0
    tile: int = DEFAULT_TILE
    outscale: float | None = None
    color_fix: ColorFix = "none"
    sampler: SamplerName = "deterministic"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.color_fix not in COLOR_FIXES:
            raise ConfigError(f"colour fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2^63), got {self.seed}")
        if self.tile < 0:
            raise ConfigError(f"tile must be >= 0 (0: the whole image at once), got {self.tile}")


@dataclass(frozen=True)
class JobResult:
    output: Path  # the full-resolution PNG, as `tadsr upscale` writes it
    before: Path  # preview: the input upscaled with bicubic
    after: Path  # preview: the result
    input_size: tuple[int, int]  # (W, H)
    output_size: tuple[int, int]  # (W, H)
    seconds: float  # reading the upload to writing the PNG, less any wait for the device
    summary: str  # one line for the page


def output_name(name: str, scale: float) -> str:
    """``photo.jpg`` at x4 -> ``photo_x4.png``; the stem is shortened so that the name fits a file system."""
    suffix = f"_x{scale:g}.png"
    stem = Path(name).stem or "image"
    while len((stem + suffix).encode()) > NAME_MAX:
        stem = stem[:-1]
    return stem + suffix


def _rename(err: Exception, source: Path, name: str) -> str:
    """An error's line with the upload's temporary path replaced by the name the user knows."""
    return first_line(err).replace(str(source), name)


def upscale_file(source: str | os.PathLike, name: str, settings: JobSettings, models: ModelCache, out_dir: Path,
                 max_pixels: int = DEFAULT_MAX_PIXELS, progress: Callable[[int, int], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> JobResult:
    """Upscale one uploaded file into ``out_dir`` (the upload is ``source``, ``name`` its original file name).

    Raises ``TadsrError`` with one line naming ``name`` (unreadable or oversized image, unknown model, steps the
    model cannot run, output too large) and ``Cancelled`` if ``cancelled()`` turns true between tiles.
    ``progress(done, total)`` follows the tiles.
    """
    source = Path(source)
    entry = models.entry(settings.model)
    steps = check_steps(settings.steps, entry.role, entry.num_steps, entry.label)
    outscale = None if settings.outscale in (None, entry.scale) else settings.outscale
    start = time.perf_counter()
    try:
        image = read_image(source, max_pixels=max_pixels)
    except ImageError as err:
        raise ImageError(_rename(err, source, name)) from None
    height, width = image.pixels.shape[:2]

    def tile_done(done: int, total: int) -> None:
        if cancelled is not None and cancelled():
            raise Cancelled(f"{name}: cancelled")
        if progress is not None:
            progress(done, total)

    waited = time.perf_counter()
    with models.lock:  # one job at a time on the device
        start += time.perf_counter() - waited  # the time it took, not the time it waited
        if cancelled is not None and cancelled():
            raise Cancelled(f"{name}: cancelled")
        upscaler = models.upscaler(settings.model, steps=steps, sampler=settings.sampler, tile=settings.tile,
                                   seed=settings.seed, color_fix=settings.color_fix, outscale=outscale)
        out_h, out_w = upscaler.output_size(height, width)
        try:
            check_output_size(source, (out_h, out_w), max_pixels)
        except ImageError as err:
            raise ImageError(_rename(err, source, name)) from None
        try:
            result = upscaler.upscale_image(image, tile_done)
        except (RuntimeError, ValueError) as err:  # e.g. out of memory: one line, the server goes on
            raise ImageError(f"{name}: {type(err).__name__}: {first_line(err)}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / output_name(name, settings.outscale or entry.scale)
    write_image(output, result)
    seconds = time.perf_counter() - start
    before, after = write_previews(image, result, out_dir)
    depth = f"{result.bit_depth}-bit {'gray' if result.is_gray else 'RGB'}{'A' if result.has_alpha else ''}"
    how = f"{steps} steps ({settings.sampler} sampler)" if steps > 1 else "1 step"
    summary = (f"{width}x{height} -> {out_w}x{out_h} ({depth} PNG, {output.stat().st_size / 1e6:.1f} MB) in "
               f"{seconds:.2f} s with {entry.label}, {how}, on {models.device}")
    return JobResult(output, before, after, (width, height), (out_w, out_h), seconds, summary)


def to_preview(pixels: np.ndarray) -> np.ndarray:
    """8-bit RGB or RGBA of any (H, W[, C]) uint8/uint16 pixels, as a browser shows it."""
    return gray_to_rgb(to_8bit(pixels))


def preview_size(width: int, height: int, side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """(W, H) scaled down so that the longer side is at most ``side``."""
    factor = min(1.0, side / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))


def write_previews(image: ImageData, result: ImageData, out_dir: Path) -> tuple[Path, Path]:
    """``before.png`` (the input, bicubic) and ``after.png`` (the result), 8-bit, of one size for the slider."""
    out_h, out_w = result.pixels.shape[:2]
    size = preview_size(out_w, out_h)
    before = cv2.resize(to_preview(image.pixels), size, interpolation=cv2.INTER_CUBIC)
    after = to_preview(result.pixels)
    if size != (out_w, out_h):
        after = cv2.resize(after, size, interpolation=cv2.INTER_AREA)
    paths = out_dir / "before.png", out_dir / "after.png"
    for path, pixels in zip(paths, (before, after), strict=True):
        bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR if pixels.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])  # fast: a preview
        if not ok:
            raise ImageError(f"{path}: OpenCV could not encode the preview")
        path.write_bytes(data.tobytes())
    return paths


def remove_tree(path: Path) -> None:
    """Delete a folder and what it holds; nothing if it is gone already."""
    shutil.rmtree(path, ignore_errors=True)


def sweep(root: Path, max_age: float = MAX_AGE_SECONDS, now: float | None = None) -> int:
    """Delete the files under ``root`` last modified more than ``max_age`` seconds ago, and the folders they
    leave empty or that are as old and empty (not a job's new folder); returns how many files went."""
    now = time.time() if now is None else now
    removed = 0
    for folder, _dirs, files in os.walk(root, topdown=False):
        emptied = False
        for name in files:
            path = Path(folder) / name
            try:
                if now - path.lstat().st_mtime > max_age:
                    path.unlink()
                    removed += 1
                    emptied = True
            except FileNotFoundError:
                pass
        if Path(folder) != root:
            try:
                if emptied or now - Path(folder).stat().st_mtime > max_age:
                    Path(folder).rmdir()  # only if empty
            except OSError:
                pass
    return removed
