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
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from tadsr import distributed
from tadsr.bt601 import LUMA
from tadsr.data.datasets import list_images, load_rgb, pair_by_name
from tadsr.data.image_io import DEFAULT_MAX_PIXELS, ImageData, ImageError, pixel_count, to_uint8, write_image
from tadsr.devices import DTYPES, autocast, peak_memory_mib, reset_peak_memory, resolve_device, synchronize
from tadsr.errors import ConfigError, NotFoundError, TadsrError, first_line
from tadsr.metrics.detail import chroma_mse, detail_ratio, false_colour, is_gray, mse_to_psnr
from tadsr.metrics.full_reference import prepare, psnr, ssim

FULL_REFERENCE = ("psnr", "ssim", "lpips")
ARTEFACT = ("chroma", "gray", "detail")  # tadsr.metrics.detail; need ground truth
NO_REFERENCE = ("niqe",)
PYIQA_METRICS = ("clipiqa", "musiq", "maniqa", "fid")
SET_FIGURE = {"chroma": "pooled MSE", "detail": "median"}  # the rest: mean ± std over pairs


def summarize(name: str, values: Sequence[float]) -> float:
    """The set figure of metric ``name`` from its per-pair values: chroma PSNR from the pooled MSE, the median
    detail ratio, otherwise the mean (NaN when no pair has the metric)."""
    values = [v for v in values if math.isfinite(v)]
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


@dataclass
class MetricSet:
    """The metrics asked for, with their settings; ``unavailable`` maps a metric to why it cannot run."""

    names: list[str]
    y_channel: bool = False
    crop_border: int = 0
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    pyiqa: dict[str, Callable] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def measure(self, pred: np.ndarray, gt: np.ndarray | None, scale: int = 4) -> dict[str, float]:
        """The metrics of one pair (float RGB in [0, 1]); ``scale``: GT size / LR size, for ``detail``. A metric
        that does not apply (no GT, ``gray`` on a colour GT) is absent from the result."""
        out: dict[str, float] = {}
        p = _tensor(pred)
        for name in self.names:
            if name in self.unavailable:
                continue
            if name in (*FULL_REFERENCE, *ARTEFACT):
                if gt is None:
                    continue
                if gt.shape != pred.shape:
                    raise ImageError(f"the prediction is {pred.shape[1]}x{pred.shape[0]} but the GT is "
                                     f"{gt.shape[1]}x{gt.shape[0]}")
                if name in ARTEFACT:
                    out |= self._artefact(name, pred, gt, scale)
                    continue
                side = min(gt.shape[:2]) - 2 * self.crop_border
                if side < (11 if name == "ssim" else 1):
                    raise ImageError(f"{gt.shape[1]}x{gt.shape[0]} with --crop-border {self.crop_border} leaves "
                                     f"{max(side, 0)} pixels a side; {name} needs {11 if name == 'ssim' else 1}")
                a, b = prepare(p, _tensor(gt), self.y_channel and name != "lpips", self.crop_border)
                if name == "psnr":
                    out[name] = float(psnr(a, b))
                elif name == "ssim":
                    out[name] = float(ssim(a, b))
                elif self.lpips is not None:
                    out[name] = float(self.lpips(a.float() * 2 - 1, b.float() * 2 - 1))
            elif name == "niqe":
                from tadsr.metrics.niqe import niqe

                out[name] = float(niqe(pred, crop_border=self.crop_border))
            elif name in self.pyiqa and name != "fid":
                with torch.no_grad():
                    out[name] = float(self.pyiqa[name](p.float()))
        return out

    def _artefact(self, name: str, pred: np.ndarray, gt: np.ndarray, scale: int) -> dict[str, float]:
        """``chroma``, ``gray`` or ``detail`` of one pair (module docstring), on 8-bit levels and the crop border."""
        b = self.crop_border
        pred8, gt8 = (img[b:img.shape[0] - b, b:img.shape[1] - b] * 255 for img in (pred, gt))
        if name == "chroma":
            return {name: mse_to_psnr(chroma_mse(pred8, gt8))}
        if name == "gray":
            return {name: false_colour(pred8)} if is_gray(gt8) else {}
        if min(gt8.shape[:2]) < 2 * scale:
            raise ImageError(f"{gt.shape[1]}x{gt.shape[0]}: too small for detail at x{scale}")
        return {name: detail_ratio(pred8, gt8, scale)}

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


def make_model(spec: str, device: torch.device, realesrgan_weights: Path | None, seed: int,
               tile: int, dtype: str = "fp32") -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """``NAME[:STEPS]`` -> (label, function from an LR float RGB image to its SR image), networks computing in
    ``dtype`` (fp32, or fp16 / bf16 under autocast; fp32 by default on every device, so GPU figures compare with
    CPU ones)."""
    name, _, steps_text = spec.partition(":")
    steps = int(steps_text) if steps_text else None
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
    up = Upscaler(open_model(name, device=device, dtype=DTYPES[dtype], steps=steps), seed=seed, tile=tile)

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
    names = list(metrics.names)
    with open(out_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "name", *names])
        for result in results:
            for image, values in result.rows.items():
                writer.writerow([result.label, image, *[_fmt(values.get(m)) for m in names]])
    heads = [f"{m} ({SET_FIGURE[m]})" if m in SET_FIGURE else m for m in names]
    lines = [f"# tadsr evaluation\n\n{header}\n", "| model | " + " | ".join(heads) + " | s / image | peak MiB |",
             "|---|" + "---:|" * (len(names) + 2)]
    summary = {}
    for result in results:
        figures, cells = set_figures(result, metrics), []
        for m in names:
            values = [v[m] for v in result.rows.values() if m in v and math.isfinite(v[m])]
            if m in metrics.unavailable:
                cells.append("not available")
            elif not math.isfinite(figures[m]):
                cells.append("—")
            elif m in result.set_values or m in SET_FIGURE:
                cells.append(f"{figures[m]:.4f}")
            else:
                cells.append(f"{figures[m]:.4f} ± {np.std(values):.4f}")
        sec = f"{np.median(result.seconds):.3f}" if result.seconds else "—"
        peak = f"{result.peak_mib:.0f}" if result.peak_mib else "—"
        lines.append(f"| {result.label} | " + " | ".join(cells) + f" | {sec} | {peak} |")
        summary[result.label] = {**{m: v if math.isfinite(v) else None for m, v in figures.items()},
                                 "pairs": len(result.rows),
                                 "seconds_per_image": float(np.median(result.seconds)) if result.seconds else None,
                                 "peak_mib": result.peak_mib or None}
    if metrics.unavailable:
        lines.append("")
        lines += [f"- {m}: not available ({why})" for m, why in metrics.unavailable.items()]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    (out_dir / "report.json").write_text(json.dumps(summary, indent=1) + "\n")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


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
    """Refuse, before any work, two models that would share a report row: a model file is labelled by its stem
    (``runs/a/final.safetensors:1`` and ``runs/b/final.safetensors:1`` are both ``final:1``)."""
    seen: dict[tuple[str, str], str] = {}
    for spec in models:
        name, _, steps = spec.partition(":")
        key = (label_stem(name), steps)
        if key in seen:
            raise ConfigError(f"--models: {seen[key]} and {spec} would share the label {key[0]}:{steps or '...'} "
                              "in the report; rename one of the files")
        seen[key] = spec


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
             models: Sequence[str] = (), pred_dir: Path | None = None, device: str = "cpu", seed: int = 0,
             tile: int = 0, realesrgan_weights: Path | None = None, report: Callable[[str], None] = print,
             show_progress: bool = True, sheet_images: int = 4,
             max_pixels: int = DEFAULT_MAX_PIXELS, dtype: str = "fp32", scale: int = 4) -> list[ModelResult]:
    """Measure predictions (``pred_dir``) or models run on ``lr_dir``; see the module docstring for the outputs.

    A pair that cannot be measured (unreadable, a size that does not match the GT, too small for a metric) is
    reported through ``report`` in one line and left out; the report is written for the others, and then
    ``EvaluationIncomplete`` says how many were left out. ``scale`` is the SR factor that ``detail`` assumes for
    predictions; for models run here it is each pair's GT size / LR size.

    Under torchrun the models' pairs are split across the ranks (``distributed.assign``, balanced by the LR's
    pixel count; one device per rank), each rank measures its own, and rank 0 writes one report of all of them: the
    same figures as one process (the noise is per image). Measuring existing predictions (``pred_dir``) runs on
    rank 0 alone.
    """
    check_labels(models)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world, dev = distributed.init(resolve_device(device))
    if world > 1 and pred_dir is not None and rank != 0:
        return []
    source = pred_dir if pred_dir is not None else lr_dir
    assert source is not None
    pairs = list_pairs(source, gt_dir, report)
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
                     device: str = "cpu") -> MetricSet:
    """Resolve metric names; what cannot run here (no weights, no pyiqa) is marked unavailable with the reason."""
    known = (*FULL_REFERENCE, *ARTEFACT, *NO_REFERENCE, *PYIQA_METRICS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    metrics = MetricSet(list(names), y_channel, crop_border)
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
