"""Seconds per output megapixel and peak memory of `Upscaler` with the real-SR x4 architecture (random weights).

Each configuration runs in its own process, so its peak memory (max RSS on CPU, max allocated on CUDA) is its own.

Usage: python benchmarks/upscale_speed.py [--size 128] [--tiles 64,128] [--steps 1,15] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from tadsr.devices import peak_memory_mib, reset_peak_memory, synchronize


def run_one(size: int, tile: int, steps: int, device: str) -> dict:
    from tadsr.data.image_io import ImageData
    from tadsr.inference.backend import ModelBackend
    from tadsr.inference.upscaler import Upscaler
    from tadsr.model import SRModel
    from tadsr.presets import model_config

    torch.manual_seed(0)
    model = SRModel(model_config("realsr-x4"))
    upscaler = Upscaler(ModelBackend(model, device=device, steps=steps), tile=tile, tile_overlap=16)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    tiles = []
    reset_peak_memory(upscaler.device)
    start = time.perf_counter()
    out = upscaler.upscale_image(ImageData(image), progress=lambda done, total: tiles.append(total))
    synchronize(upscaler.device)
    seconds = time.perf_counter() - start
    megapixels = out.pixels.shape[0] * out.pixels.shape[1] / 1e6
    peak = peak_memory_mib(upscaler.device)
    return {"lr": size, "tile": tile, "steps": steps, "tiles": tiles[-1], "seconds": round(seconds, 1),
            "s_per_mp": round(seconds / megapixels, 1), "peak_mib": round(peak), "device": device,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="LR side (output is 4x)")
    parser.add_argument("--tiles", default="64,128")
    parser.add_argument("--steps", default="1,15")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", nargs=2, type=int, metavar=("TILE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.size, args.one[0], args.one[1], args.device)))
        return
    print(f"{'tile':>5} {'steps':>5} {'tiles':>5} {'seconds':>8} {'s/MP':>8} {'peak MiB':>9}")
    for tile in map(int, args.tiles.split(",")):
        for steps in map(int, args.steps.split(",")):
            out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--device", args.device,
                                  "--one", str(tile), str(steps)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{tile:>5} {steps:>5} {row['tiles']:>5} {row['seconds']:>8} {row['s_per_mp']:>8} "
                  f"{row['peak_mib']:>9}", flush=True)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"LR {args.size}x{args.size} -> {4 * args.size}x{4 * args.size}, overlap 16, random weights")


if __name__ == "__main__":
    main()
