"""Training pairs per second of the degradation pipelines, through a DataLoader with worker processes (CPU), and
batched on CUDA when available.

Usage: python benchmarks/degradation_speed.py [--data FOLDER] [--presets realesrgan,face-gfpgan] [--workers 2]
Without --data, scikit-image's bundled colour photos are used (pip install scikit-image), else random images.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tadsr.data.datasets import DegradedImageDataset
from tadsr.data.degradation import degrade, draw_params, preset


def _sample_folder(folder: Path) -> Path:
    try:
        from skimage import data

        photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.hubble_deep_field()]
    except ImportError:
        rng = np.random.default_rng(0)
        photos = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(5)]
    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(folder / f"{i}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--presets", default="realesrgan,realesrgan-test,face-gfpgan")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=160)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or _sample_folder(Path(tmp))
        print(f"data {folder}, {args.workers} workers, batch {args.batch}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        for name in args.presets.split(","):
            cfg = preset(name)
            size = 512 if name.startswith("face") else 256
            data = DegradedImageDataset(folder, cfg, gt_size=size, seed=0)
            data.files = data.files * (args.pairs // len(data.files) + 1)
            loader = DataLoader(data, batch_size=args.batch, num_workers=args.workers)
            start, done = time.perf_counter(), 0
            for batch in loader:
                done += batch["gt"].shape[0]
                if done >= args.pairs:
                    break
            rate = done / (time.perf_counter() - start)
            print(f"{name:>16}: {rate:7.1f} pairs/s on CPU (GT {size}, reading and cropping included)")
            if torch.cuda.is_available():
                hr = torch.rand(args.batch, 3, size, size, device="cuda")
                params = [draw_params(cfg, torch.Generator().manual_seed(i)) for i in range(args.batch)]
                degrade(cfg, hr, params)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(5):
                    degrade(cfg, hr, params)
                torch.cuda.synchronize()
                rate = 5 * args.batch / (time.perf_counter() - start)
                print(f"{name:>16}: {rate:7.1f} pairs/s batched on {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
