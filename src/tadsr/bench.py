"""`tadsr bench`: latency, throughput, achieved FLOP/s and peak memory of the SR pipelines, as measured ratios.

For a model (the official real-SR x4 architecture with random weights, or the embedded small one) at an LR size,
dtype and batch, it times one UNet call (U), the first-stage encode of the bicubic-upsampled LR (E) and decode (D),
the one-step student pipeline and the T-step teacher pipeline, and Real-ESRGAN x4plus (RRDBNet) as the yardstick
of what the hardware gives a plain conv net. Each time is the median of ``repeats`` runs after a warm-up,
synchronised on CUDA. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``. Reported ratios:

* speed-up of student-1 over teacher-T, against the ideal (T U + E + D) / (U + E + D);
* hardware efficiency: achieved FLOP/s of the student-1 pipeline / that of RRDBNet, same device and dtype.
"""

from __future__ import annotations

import contextlib
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from tadsr.baselines import bicubic_upscale
from tadsr.diffusion.schedule import scale_input
from tadsr.inference.pipeline import encode_lr, super_resolve
from tadsr.model import SRModel
from tadsr.nets.rrdbnet import RRDBNet

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.inference_mode()
def bench_model(model: SRModel, name: str, lr_size: int, batch: int, dtype: str, device: torch.device,
                repeats: int) -> dict[str, Any]:
    """One row: U, E, D, student-1, teacher-T latency (s), FLOPs and the two ratios."""
    model = model.to(device).eval()
    dt = DTYPES[dtype]
    gen = torch.Generator().manual_seed(0)
    lr = (torch.rand(batch, 3, lr_size, lr_size, generator=gen) * 2 - 1).to(device)
    num_steps = model.config.schedule.num_steps
    with _autocast(device, dt):
        z_y = encode_lr(model, lr)
    noise = torch.randn(z_y.shape, generator=gen).to(device)
    t = torch.full((batch,), num_steps - 1, dtype=torch.long, device=device)
    x = scale_input(model.schedule, z_y + noise, t)

    def unet() -> Any:
        with _autocast(device, dt):
            return model.unet(x, t, lr)

    def encode() -> Any:
        with _autocast(device, dt):
            return encode_lr(model, lr)

    def decode() -> Any:
        with _autocast(device, dt):
            return model.first_stage.decode(z_y)

    def run(steps: int) -> Callable[[], Any]:
        auto = None if dt == torch.float32 else dt
        return lambda: super_resolve(model, lr, steps=steps, noise=noise, autocast_dtype=auto)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    u, e, d = (median_seconds(f, device, repeats) for f in (unet, encode, decode))
    student = median_seconds(run(1), device, repeats)
    teacher = median_seconds(run(num_steps), device, repeats)
    peak = _peak_mib(device)
    flops = count_flops(run(1))
    ideal = (num_steps * u + e + d) / (u + e + d)
    return {"model": name, "lr": lr_size, "batch": batch, "dtype": dtype, "U_s": u, "E_s": e, "D_s": d,
            "student_1_s": student, f"teacher_{num_steps}_s": teacher, "speedup": teacher / student,
            "ideal_speedup": ideal, "speedup_vs_ideal": (teacher / student) / ideal, "student_gflop": flops / 1e9,
            "student_gflops_per_s": flops / student / 1e9, "peak_mib": peak}


@torch.inference_mode()
def bench_rrdbnet(lr_size: int, batch: int, dtype: str, device: torch.device, repeats: int) -> dict[str, Any]:
    net = RRDBNet().to(device).eval()
    x = torch.rand(batch, 3, lr_size, lr_size, generator=torch.Generator().manual_seed(0)).to(device)
    dt = DTYPES[dtype]

    def run() -> Any:
        with _autocast(device, dt):
            return net(x)

    seconds = median_seconds(run, device, repeats)
    flops = count_flops(run)
    return {"model": "realesrgan-x4plus", "lr": lr_size, "batch": batch, "dtype": dtype, "seconds": seconds,
            "gflop": flops / 1e9, "gflops_per_s": flops / seconds / 1e9, "bicubic_s": median_seconds(
                lambda: bicubic_upscale((x * 1).clamp(0, 1)), device, repeats)}


def environment(device: torch.device) -> dict[str, Any]:
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}


def to_json(rows: list[dict[str, Any]], device: torch.device) -> str:
    return json.dumps({"environment": environment(device), "rows": rows}, indent=1)
