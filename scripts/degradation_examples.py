"""Write docs/degradation-<preset>.png: HR crops (top row) and their degraded LR (bottom row, nearest-upsampled to
the HR size) for each degradation preset, on scikit-image's bundled photos (pip install scikit-image).

Usage: python scripts/degradation_examples.py [--out docs] [--seed 0] [--thumb 160]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data as skdata

from tadsr.data.datasets import sample_generator, square_crop_resize, to_chw_tensor
from tadsr.data.degradation import PRESETS, degrade, draw_params, preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thumb", type=int, default=160)
    args = parser.parse_args()
    photos = {"astronaut": skdata.astronaut(), "chelsea": skdata.chelsea(), "coffee": skdata.coffee(),
              "rocket": skdata.rocket()}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in PRESETS:
        cfg = preset(name)
        size = 512 if name == "face-gfpgan" else 256
        columns = []
        for i, photo in enumerate(photos.values()):
            gt = square_crop_resize(photo.astype(np.float32) / 255, size, None)
            hr, lr = degrade(cfg, to_chw_tensor(gt)[None], [draw_params(cfg, sample_generator(args.seed, i))])
            hr_img = (hr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            lr_img = (lr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            t = args.thumb
            top = cv2.resize(hr_img, (t, t), interpolation=cv2.INTER_AREA)
            # LR shown pixel for pixel: nearest-neighbour to the thumbnail size
            bottom = cv2.resize(lr_img, (t, t), interpolation=cv2.INTER_NEAREST if lr_img.shape[0] <= t
                                else cv2.INTER_AREA)
            columns.append(np.concatenate([top, bottom], axis=0))
        grid = np.concatenate(columns, axis=1)
        path = args.out / f"degradation-{name}.png"
        Image.fromarray(grid).save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
