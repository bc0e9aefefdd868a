"""The embedded student through PyTorch (fp32) and through ONNX Runtime (its `tadsr export` file), in one run.

Seconds per image (median of --repeats, after one warm-up) at each LR size, untiled; and the largest difference
between the two outputs (of [0, 1]). The ratio printed is PyTorch / ONNX Runtime, measured in this run.

Usage: python benchmarks/onnx_speed.py [--sizes 64,256] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tadsr.export import export_onnx
from tadsr.inference.upscaler import Upscaler
from tadsr.model import load_model, resolve_model_path


def median_seconds(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


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
    eager = Upscaler.from_pretrained("student", device="cpu", tile=0)
    onnx = Upscaler.from_pretrained(path, tile=0)
    print("| LR -> HR | PyTorch fp32 (s) | ONNX Runtime (s) | PyTorch / ORT | max abs difference |")
    print("|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for size in (int(s) for s in args.sizes.split(",")):
        lr = torch.from_numpy(rng.random((1, 3, size, size), dtype=np.float32)) * 2 - 1
        t_eager = median_seconds(lambda lr=lr: eager.upscale_tensor(lr), args.repeats)
        t_onnx = median_seconds(lambda lr=lr: onnx.upscale_tensor(lr), args.repeats)
        diff = float((eager.upscale_tensor(lr) - onnx.upscale_tensor(lr)).abs().max()) / 2
        print(f"| {size} -> {size * 4} | {t_eager:.3f} | {t_onnx:.3f} | {t_eager / t_onnx:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
