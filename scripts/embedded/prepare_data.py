"""Prepare the photos the embedded teacher and student are trained and validated on (issue: embedded models).

Sources, and only these (so that evaluations on other photos stay unbiased):
* the Debian packages lomiri-wallpapers-16.04 (its photos in /usr/share/backgrounds), mate-backgrounds (the
  photos in /usr/share/backgrounds/mate/nature) and ukui-wallpapers (the five photo-like images its list below
  names; the rest are flat graphics);
* scikit-image's bundled photos (colour and gray), except the three demo photos (astronaut, chelsea, coffee).

The photos stay at their native resolution: training cuts multi-scale crops from them (``data.crop=native``).
The validation split is the fixed list of whole photos in docs/embedded-split.txt (about 10%). Written to OUT:
* ``train.txt``: the training photos' paths (the Debian files in place, scikit-image's as PNG under ``skimage/``);
* ``val-hr/``: native-resolution 256x256 crops of the validation photos on an even grid (up to 3x3 per photo),
  ``val-hr-gray/``: the same crops with R = G = B (for the false-colour figure).

Usage: python scripts/embedded/prepare_data.py OUT
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

SPLIT = Path(__file__).resolve().parents[2] / "docs" / "embedded-split.txt"
DEBIAN = {
    "lomiri-wallpapers-16.04": lambda p: p.suffix == ".jpg",
    "mate-backgrounds": lambda p: p.parent.name == "nature",
    "ukui-wallpapers": lambda p: p.stem in {"calla", "goldfish", "rhythm", "string", "the-mouse"},
}
SKIMAGE = ("rocket", "hubble_deep_field", "stereo_motorcycle", "camera", "brick", "grass", "gravel", "moon", "coins")
CROP, GRID = 256, 3


def debian_photos() -> list[Path]:
    photos = []
    for package, keep in DEBIAN.items():
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        if listing.returncode:
            sys.exit(f"install the photos first: apt-get install -y --no-install-recommends {' '.join(DEBIAN)}")
        files = [Path(line) for line in listing.stdout.splitlines() if line.endswith((".jpg", ".png"))]
        photos += [p for p in files if keep(p)]
    return sorted(photos)


def skimage_photos(out: Path) -> list[Path]:
    import skimage.data

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SKIMAGE:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: the left view
        path = out / f"{name}.png"
        cv2.imwrite(str(path), img if img.ndim == 2 else img[:, :, ::-1])
        paths.append(path)
    return paths


def grid_crops(img: np.ndarray, size: int = CROP, grid: int = GRID) -> list[tuple[int, int]]:
    """Top-left corners of up to grid x grid crops, evenly spread over the photo."""
    h, w = img.shape[:2]

    def spread(length: int) -> list[int]:
        n = min(grid, length // size)
        return [round(i * (length - size) / max(1, n - 1)) for i in range(n)] if n > 1 else [(length - size) // 2]

    return [(top, left) for top in spread(h) for left in spread(w)]


def main() -> None:
    out = Path(sys.argv[1])
    val_names = {line.split("#")[0].strip() for line in SPLIT.read_text().splitlines()} - {""}
    photos = debian_photos() + skimage_photos(out / "skimage")
    missing = val_names - {p.name for p in photos}
    if missing:
        sys.exit(f"validation photos not found: {sorted(missing)}")
    train = [p for p in photos if p.name not in val_names]
    (out / "train.txt").write_text("".join(f"{p.resolve()}\n" for p in train))
    n = 0
    for folder in ("val-hr", "val-hr-gray"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for path in (p for p in photos if p.name in val_names):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        for top, left in grid_crops(img):
            crop = img[top:top + CROP, left:left + CROP]
            name = f"{path.stem[:24]}_{top}_{left}.png"
            cv2.imwrite(str(out / "val-hr" / name), crop)
            cv2.imwrite(str(out / "val-hr-gray" / name), cv2.cvtColor(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY),
                                                                      cv2.COLOR_GRAY2BGR))
            n += 1
    print(f"{len(train)} training photos ({out / 'train.txt'}), {len(photos) - len(train)} validation photos "
          f"-> {n} crops of {CROP}x{CROP} in {out / 'val-hr'}")


if __name__ == "__main__":
    main()
