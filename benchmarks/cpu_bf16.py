"""bf16 autocast against fp32 on this CPU, in one run: seconds per image and the PSNR of the bf16 output against the
fp32 one (how far bf16 moves the picture). Says whether the CPU computes bf16 natively (``devices.cpu_bf16_native``).

Models: the embedded student, and the real-SR x4 architecture (VQ-f4 first stage) with random weights.
Usage: python benchmarks/cpu_bf16.py [--sizes 64,256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from tadsr.bench import cpu_bf16_line, median_seconds
from tadsr.inference.backend import ModelBackend
from tadsr.inference.upscaler import Upscaler
from tadsr.model import SRModel, load_model, resolve_model_path
from tadsr.presets import model_config

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"bf16 on this CPU: {cpu_bf16_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    torch.manual_seed(0)
    models = {"embedded student": load_model(resolve_model_path("student")),
              "realsr-x4 (random weights)": SRModel(model_config("realsr-x4", role="student"))}
    print("| model | LR -> HR | fp32 (s) | bf16 (s) | fp32 / bf16 | PSNR bf16 vs fp32 (dB) |")
    print("|---|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name, model in models.items():
        for size in (int(s) for s in args.sizes.split(",")):
            if "realsr" in name and size > 64:
                continue  # 256 -> 1024 through VQ-f4 takes minutes on two cores
            lr = torch.from_numpy(rng.random((1, 3, size, size), dtype=np.float32)) * 2 - 1
            ups = {d: Upscaler(ModelBackend(model, device="cpu", dtype=d), tile=0)
                   for d in (torch.float32, torch.bfloat16)}
            t32 = median_seconds(lambda lr=lr, up=ups[torch.float32]: up.upscale_tensor(lr), CPU, args.repeats)
            t16 = median_seconds(lambda lr=lr, up=ups[torch.bfloat16]: up.upscale_tensor(lr), CPU, args.repeats)
            a, b = (ups[d].upscale_tensor(lr).float() for d in (torch.float32, torch.bfloat16))
            mse = float(((a - b) / 2).pow(2).mean())
            psnr = 10 * math.log10(1 / mse) if mse > 0 else float("inf")
            print(f"| {name} | {size} -> {size * 4} | {t32:.3f} | {t16:.3f} | {t32 / t16:.2f}x | {psnr:.1f} |")


if __name__ == "__main__":
    main()
