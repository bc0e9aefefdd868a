"""`tadsr bench`: latency, throughput, achieved FLOP/s and peak memory of the SR pipelines, as measured ratios.

For a model (the official real-SR x4 architecture with random weights, or the embedded small one) at an LR size,
dtype and batch, it times one UNet call (U), the first-stage encode of the bicubic-upsampled LR (E) and decode (D),
the one-step student pipeline and the T-step teacher pipeline, and Real-ESRGAN x4plus (RRDBNet) as the yardstick
of what the hardware gives a plain conv net. Each time is the median of ``repeats`` runs after a warm-up,
synchronised on CUDA. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``. Reported ratios:

* speed-up of student-1 over teacher-T, against the ideal (T U + E + D) / (U + E + D);
* hardware efficiency: achieved FLOP/s of the student-1 pipeline / that of RRDBNet, same device and dtype;
* speed against Real-ESRGAN x4plus: RRDBNet's seconds / student-1's, same input, device and dtype ("× RRDB speed").

A model is named as ``tadsr upscale --model`` names one, and opened by ``tadsr.backends.open_model`` (``load``);
an exported ``.onnx`` file (``tadsr export``) or an SD student file (``tadsr distill --teacher DIFFUSERS_DIR``) in
``models`` gets one row per size, run as ``tadsr upscale --model FILE`` runs it (``bench_file``): ONNX Runtime on
the CPU at the file's own precision, or the SD student in float32.

LR sizes above the tile size run tiled (``tiled_super_resolve``, as ``tadsr upscale`` does): one timed run of
the first ``max_tiles`` tiles after a one-tile warm-up, the whole-image time estimated from it (``est``, see
``time_tiles``), and the peak memory of that run. Memory does not grow with the number of tiles (the output
accumulators are allocated before the first tile), so the peak of the first tiles is the peak of the whole run.

Peak memory is per measurement: CUDA's max allocated, or on CPU the process's peak resident set (VmHWM, reset
before each measurement through /proc/self/clear_refs; the process high-water mark where that is unavailable).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from tadsr.backends import NOUNS, model_info, open_model
from tadsr.devices import DTYPES, autocast, cpu_bf16_native, peak_memory_mib, reset_peak_memory, synchronize
from tadsr.errors import ConfigError, TadsrError, first_line
from tadsr.inference.backend import Backend, ModelBackend, fixed_tile
from tadsr.inference.fast import prepare_for_inference
from tadsr.inference.onnx import OnnxModel
from tadsr.inference.pipeline import encode_lr, super_resolve
from tadsr.inference.tiling import DEFAULT_TILE_OVERLAP, tiled_super_resolve
from tadsr.inference.upscaler import Upscaler
from tadsr.model import SRModel
from tadsr.nets.rrdbnet import RRDBNet
from tadsr.presets import MODEL_PRESETS, model_config
from tadsr.sd.diffusers_teacher import DiffusersBackend


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _measure(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds, peak MiB) of ``fn``."""
    reset_peak_memory(device)
    seconds = median_seconds(fn, device, repeats)
    return seconds, peak_memory_mib(device)


def _lr_batch(batch: int, size: int, device: torch.device) -> torch.Tensor:
    return (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)


@torch.inference_mode()
def bench_model(model: SRModel, name: str, lr_size: int, batch: int, dtype: str, device: torch.device,
                repeats: int) -> dict[str, Any]:
    """One untiled row: U, E, D, student-1, teacher-T latency (s), throughput, FLOPs, peak memory, the ratios."""
    model = model.to(device).eval()
    dt = DTYPES[dtype]
    lr = _lr_batch(batch, lr_size, device)
    num_steps = model.config.schedule.num_steps
    with autocast(device, dt):
        z_y = encode_lr(model, lr)
    noise = torch.randn(z_y.shape, generator=torch.Generator().manual_seed(1)).to(device)
    t = torch.full((batch,), num_steps - 1, dtype=torch.long, device=device)
    z_t, denoiser = z_y + noise, model.denoiser

    def unet() -> Any:
        with autocast(device, dt):
            return denoiser(z_t, t, lr, z_y)

    def encode() -> Any:
        with autocast(device, dt):
            return encode_lr(model, lr)

    def decode() -> Any:
        with autocast(device, dt):
            return model.first_stage.decode(z_y)

    def run(steps: int) -> Callable[[], Any]:
        auto = None if dt == torch.float32 else dt
        return lambda: super_resolve(model, lr, steps=steps, noise=noise, autocast_dtype=auto)

    u, e, d = (median_seconds(f, device, repeats) for f in (unet, encode, decode))
    student, student_peak = _measure(run(1), device, repeats)
    teacher, teacher_peak = _measure(run(num_steps), device, repeats)
    flops = count_flops(run(1))
    ideal = (num_steps * u + e + d) / (u + e + d)
    return {"model": name, "lr": lr_size, "out": lr_size * model.config.scale, "batch": batch, "dtype": dtype,
            "tiles": 0, "U_s": u, "E_s": e, "D_s": d, "student_1_s": student, f"teacher_{num_steps}_s": teacher,
            "student_images_per_s": batch / student, "speedup": teacher / student, "ideal_speedup": ideal,
            "speedup_vs_ideal": (teacher / student) / ideal, "student_gflop": flops / 1e9,
            "student_gflops_per_s": flops / student / 1e9, "student_peak_mib": student_peak,
            "teacher_peak_mib": teacher_peak}


class _EnoughTiles(Exception):
    pass


def time_tiles(model: SRModel, lr: torch.Tensor, steps: int, tile: int, overlap: int, tile_batch: int,
               dtype: torch.dtype, device: torch.device, max_tiles: int) -> dict[str, Any]:
    """Time ``tiled_super_resolve`` over its first ``max_tiles`` tiles (all when 0); estimate the whole image.

    The estimate counts the one-off work (the image's noise draw, the accumulators, the first batch) once: it is
    the time to the first batch plus the steady per-tile rate of the later timed batches times the tiles left.
    With a single timed batch it falls back to time x tiles / timed tiles (an over-estimate).
    """
    marks: list[tuple[int, float]] = []  # (tiles done, seconds since start) after each batch
    total = 0

    def progress(tiles: int, all_tiles: int) -> None:
        nonlocal total
        synchronize(device)
        marks.append((tiles, time.perf_counter() - start))
        total = all_tiles
        if max_tiles and tiles >= max_tiles and tiles < all_tiles:
            raise _EnoughTiles

    backend = ModelBackend(model, device=device, dtype=dtype, steps=steps)
    run = dict(tile=tile, overlap=overlap, batch_size=tile_batch)
    # warm-up: one tile's worth of work at the tile size
    tiled_super_resolve(backend, lr[..., :tile, :tile], **run)
    synchronize(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    with contextlib.suppress(_EnoughTiles):
        tiled_super_resolve(backend, lr, progress=progress, **run)
    seconds = time.perf_counter() - start
    done = marks[-1][0]
    if done >= total:
        estimate = seconds
    elif len(marks) >= 2:
        (first_tiles, first_s), (last_tiles, last_s) = marks[0], marks[-1]
        estimate = first_s + (last_s - first_s) / (last_tiles - first_tiles) * (total - first_tiles)
    else:
        estimate = seconds * total / done
    return {"tiles_timed": done, "tiles_total": total, "seconds": seconds, "est_seconds": estimate,
            "peak_mib": peak_memory_mib(device)}


@torch.inference_mode()
def bench_tiled(model: SRModel, name: str, lr_size: int, dtype: str, device: torch.device, tile: int,
                overlap: int, tile_batch: int, max_tiles: int) -> dict[str, Any]:
    """One tiled row (an lr_size^2 image, ``tile``-pixel LR tiles): student-1 and teacher-T time and peak memory."""
    model = model.to(device).eval()
    dt = DTYPES[dtype]
    lr = _lr_batch(1, lr_size, device)
    num_steps = model.config.schedule.num_steps
    student = time_tiles(model, lr, 1, tile, overlap, tile_batch, dt, device, max_tiles)
    teacher = time_tiles(model, lr, num_steps, tile, overlap, tile_batch, dt, device, max_tiles)
    return {"model": name, "lr": lr_size, "out": lr_size * model.config.scale, "batch": 1, "dtype": dtype,
            "tiles": student["tiles_total"], "tile": tile, "overlap": overlap, "tile_batch": tile_batch,
            "tiles_timed": student["tiles_timed"], "student_1_s": student["est_seconds"],
            f"teacher_{num_steps}_s": teacher["est_seconds"],
            "estimated": student["tiles_timed"] < student["tiles_total"],
            "student_s_per_mp": student["est_seconds"] / (lr_size * model.config.scale) ** 2 * 1e6,
            "speedup": teacher["est_seconds"] / student["est_seconds"], "student_peak_mib": student["peak_mib"],
            "teacher_peak_mib": teacher["peak_mib"]}


@torch.inference_mode()
def bench_rrdbnet(lr_size: int, batch: int, dtype: str, device: torch.device, repeats: int,
                  channels_last: bool = False, compile: bool = False) -> dict[str, Any]:
    """Real-ESRGAN x4plus (RRDBNet, random weights) on a batch of lr_size^2 images: time, FLOP/s, peak memory.

    ``channels_last`` and ``compile`` give it the same treatment as the SR model (``prepare_for_inference``).
    """
    net: Any = RRDBNet().to(device).eval()
    x = _lr_batch(batch, lr_size, device).add(1).div(2)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile:
        net = torch.compile(net)
    dt = DTYPES[dtype]

    def run() -> Any:
        with autocast(device, dt):
            return net(x)

    seconds, peak = _measure(run, device, repeats)
    flops = count_flops(run)
    return {"model": "realesrgan-x4plus", "lr": lr_size, "out": lr_size * 4, "batch": batch, "dtype": dtype,
            "tiles": 0, "seconds": seconds, "images_per_s": batch / seconds, "gflop": flops / 1e9,
            "gflops_per_s": flops / seconds / 1e9, "peak_mib": peak}


def bench_file(backend: Backend, name: str, lr_size: int, repeats: int, tile: int, overlap: int) -> dict[str, Any]:
    """One row for a one-step model file that is not a tadsr SRModel, run as ``tadsr upscale --model FILE`` runs it
    (``Upscaler.upscale_tensor``: padding, the noise, tiling above ``tile``): an exported graph (``tadsr export``,
    ONNX Runtime on the CPU, a fixed-size file at its own size) or an SD student (``tadsr.sd.student``, float32).
    Median seconds of the whole image, images per second, peak memory."""
    fixed = fixed_tile(backend)[0]  # a fixed-size file runs its own size
    up = Upscaler(backend, tile=None if fixed else (tile if lr_size > tile else 0),
                  tile_overlap=None if fixed else overlap)
    dtype = f"{backend.metadata.get('precision', 'fp32')} (ORT)" if isinstance(backend, OnnxModel) else "fp32"
    lr = _lr_batch(1, lr_size, backend.device)
    seconds, peak = _measure(lambda: up.upscale_tensor(lr), backend.device, repeats)
    return {"model": Path(name).name, "lr": lr_size, "out": lr_size * up.scale, "batch": 1, "dtype": dtype,
            "tiles": up.tile_size(), "student_1_s": seconds, "student_images_per_s": 1 / seconds,
            "student_peak_mib": peak}


def check_file_settings(settings: BenchSettings) -> None:
    """A model timed whole (an ONNX graph, an SD student, a SeeSR folder) runs in float32 (an ONNX file: its own
    precision), without channels-last or compilation: a ConfigError naming it, before anything is timed, when
    ``settings`` ask for those."""
    asked = [f"--dtypes {d}" for d in settings.dtypes if d != "fp32"]
    asked += [flag for flag, on in (("--channels-last", settings.channels_last), ("--compile", settings.compile))
              if on]
    if not asked:
        return
    for name in settings.models:
        if name in MODEL_PRESETS or name == "embedded":
            continue
        try:
            kind = model_info(name).kind
        except TadsrError as err:
            raise ConfigError(f"--models {name}: {err}") from err
        if kind in ("onnx", "sd-student", "seesr"):
            raise ConfigError(f"--models {name}: {NOUNS[kind]} is timed whole, in float32 (an ONNX file: its own "
                              f"precision); it does not take {', '.join(asked)} (bench it in a run of its own)")


def load(name: str, device: torch.device) -> SRModel | Backend:
    """A model of ``--models``: an official architecture by preset name (random weights), ``embedded`` (the shipped
    student), or a model file opened by ``tadsr.backends.open_model`` on ``device``: a tadsr model's ``SRModel``
    (timed part by part), or the backend of a one-step file (timed whole). One line naming it otherwise."""
    try:
        if name in MODEL_PRESETS:
            return SRModel(model_config(name))
        backend = open_model("student" if name == "embedded" else name, device=device)
        if isinstance(backend, DiffusersBackend) or (
                not isinstance(backend, ModelBackend) and getattr(backend, "steps", 1) > 1):
            raise ConfigError("a multi-step pipeline; bench times tadsr models and one-step files (ONNX, SD "
                              "student, TAD-SeeSR)")
    except TadsrError as err:
        raise ConfigError(f"--models {name}: {err}") from err
    return backend.model if isinstance(backend, ModelBackend) else backend


def environment(device: torch.device, **settings: Any) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    extra = {"cpu_bf16": cpu_bf16_line()} if device.type == "cpu" else {}
    return {"device": name, "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), **extra, **settings}


def cpu_bf16_line() -> str:
    """What bf16 costs on this CPU, in words (``devices.cpu_bf16_native``)."""
    return "native (AVX512-BF16, AMX or ARM BF16)" if cpu_bf16_native() else "emulated (slower than fp32)"


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if found:
            return found.group(1).strip()
    return platform.processor() or "cpu"


def to_json(rows: list[dict[str, Any]], device: torch.device, **settings: Any) -> str:
    return json.dumps({"environment": environment(device, **settings), "rows": rows}, indent=1)


def _cell(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool):
        return "est." if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows: one line per model, size, dtype and batch."""
    head = ["model", "LR→HR", "dtype", "batch", "tiles", "U s", "E s", "D s", "student-1 s", "teacher-T s",
            "img/s", "speed-up", "% of ideal", "GFLOP/s", "eff. vs RRDB", "× RRDB speed", "peak MiB (1 / T)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        teacher = next((v for k, v in r.items() if k.startswith("teacher_") and k.endswith("_s")), None)
        est = " (est.)" if r.get("estimated") else ""
        if r["model"] == "realesrgan-x4plus":
            cells = [r["model"], f"{r['lr']}→{r['out']}", r["dtype"], r["batch"], "", "", "", "",
                     _cell(r["seconds"]), "", _cell(r["images_per_s"]), "", "", _cell(r["gflops_per_s"]), "1", "1",
                     f"{r['peak_mib']:.0f}"]
        elif "speedup" not in r:  # an ONNX or SD student file: one step, no teacher, no FLOP count
            cells = [r["model"], f"{r['lr']}→{r['out']}", r["dtype"], r["batch"], r["tiles"] or "", "", "", "",
                     _cell(r["student_1_s"]), "", _cell(r["student_images_per_s"]), "", "", "", "",
                     _cell(r.get("x_realesrgan", "")), f"{r['student_peak_mib']:.0f}"]
        else:
            ratio = r.get("speedup_vs_ideal")
            eff = r.get("efficiency_vs_realesrgan")
            cells = [r["model"], f"{r['lr']}→{r['out']}", r["dtype"], r["batch"], r["tiles"] or "",
                     _cell(r.get("U_s", "")), _cell(r.get("E_s", "")), _cell(r.get("D_s", "")),
                     _cell(r["student_1_s"]) + est, _cell(teacher) + est,
                     _cell(r.get("student_images_per_s", "")), _cell(r["speedup"]) + "×",
                     f"{100 * ratio:.1f}" if ratio is not None else "",
                     _cell(r.get("student_gflops_per_s", "")), f"{eff:.2f}" if eff is not None else "",
                     _cell(r.get("x_realesrgan", "")), f"{r['student_peak_mib']:.0f} / {r['teacher_peak_mib']:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class BenchSettings:
    """What ``run_bench`` measures. Sizes above ``tile`` run tiled (batch 1, ``tile_batch`` tiles per call)."""

    models: tuple[str, ...] = ("embedded", "realsr-x4")
    sizes: tuple[int, ...] = (64,)
    dtypes: tuple[str, ...] = ("fp32",)
    batches: tuple[int, ...] = (1,)
    repeats: int = 3
    tile: int = 64
    overlap: int = DEFAULT_TILE_OVERLAP
    tile_batch: int = 1
    max_tiles: int = 4
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.dtypes) - set(DTYPES))
        if unknown:
            raise ConfigError(f"unknown dtype(s) {', '.join(unknown)}; choose from {', '.join(DTYPES)}")
        if min(self.sizes) < 1 or min(self.batches) < 1 or self.repeats < 1 or self.tile < 1:
            raise ConfigError("sizes, batches, repeats and tile must be positive")


def run_bench(settings: BenchSettings, device: torch.device,
              log: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
    """All rows of ``settings``: Real-ESRGAN yardsticks, then each model's untiled and tiled rows.

    Each model is opened by ``load``. A dtype the device cannot run is skipped with a ``log`` line.
    """
    rows: list[dict[str, Any]] = []
    yardsticks: dict[tuple[int, str, int], dict[str, Any]] = {}
    fast = dict(channels_last=settings.channels_last, compile=settings.compile)
    check_file_settings(settings)

    def yardstick(size: int, dtype: str, batch: int) -> dict[str, Any]:
        key = (size, dtype, batch)
        if key not in yardsticks:
            log(f"realesrgan-x4plus {size} {dtype} batch {batch}")
            yardsticks[key] = bench_rrdbnet(size, batch, dtype, device, settings.repeats, **fast)
            rows.append(yardsticks[key])
        return yardsticks[key]

    for name in settings.models:
        loaded = load(name, device)
        if not isinstance(loaded, SRModel):
            # an exported graph (ONNX Runtime on the CPU, its own precision) or an SD student: one step, no teacher
            for size in settings.sizes:
                same = loaded.device.type == device.type  # Real-ESRGAN on the device the file runs on
                esr = yardstick(size, "fp32", 1) if same and size <= settings.tile else None
                log(f"{name} {size}")
                row = bench_file(loaded, name, size, settings.repeats, settings.tile, settings.overlap)
                if esr is not None:
                    row["x_realesrgan"] = esr["seconds"] / row["student_1_s"]
                rows.append(row)
            continue
        model = prepare_for_inference(loaded.to(device), **fast)
        for size, dtype in itertools.product(settings.sizes, settings.dtypes):
            try:
                if size > settings.tile:
                    log(f"{name} {size}->{size * model.config.scale} {dtype} tiled")
                    rows.append(bench_tiled(model, name, size, dtype, device, settings.tile, settings.overlap,
                                            settings.tile_batch, settings.max_tiles))
                    continue
                for batch in settings.batches:
                    esr = yardstick(size, dtype, batch)
                    log(f"{name} {size}->{size * model.config.scale} {dtype} batch {batch}")
                    row = bench_model(model, name, size, batch, dtype, device, settings.repeats)
                    row["efficiency_vs_realesrgan"] = row["student_gflops_per_s"] / esr["gflops_per_s"]
                    row["x_realesrgan"] = esr["seconds"] / row["student_1_s"]
                    rows.append(row)
            except RuntimeError as err:  # e.g. a dtype this device's kernels lack
                log(f"skipped {name} {size} {dtype}: {first_line(err)}")
    return rows
