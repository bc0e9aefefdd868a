"""Forward time and peak memory of the official real-SR x4 Swin-UNet (random weights) at a 64x64 latent.

Usage: python benchmarks/unet_forward.py [--size 64] [--batch 1] [--repeats 5] [--device cpu]
Prints the median latency over ``repeats`` timed calls after one warm-up call, and the peak memory
(CPU: process max RSS, which includes the weights; CUDA: max allocated).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tadsr.devices import peak_memory_mib, reset_peak_memory, resolve_device, synchronize
from tadsr.presets import build_unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(0)
    peak_before = peak_memory_mib(device)
    unet = build_unet("realsr-x4").to(device).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    lq = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    t = torch.full((args.batch,), 14, dtype=torch.int64, device=device)
    times = []
    reset_peak_memory(device)
    with torch.inference_mode():
        for i in range(args.repeats + 1):
            synchronize(device)
            start = time.perf_counter()
            unet(x, t, lq)
            synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
    peak = peak_memory_mib(device)
    peak_name = "cuda_max_allocated_mib" if device.type == "cuda" else "cpu_max_rss_mib"
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "size": args.size, "batch": args.batch,
        "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
        peak_name: round(peak, 1), "peak_before_build_mib": round(peak_before, 1),
    }))


if __name__ == "__main__":
    main()
