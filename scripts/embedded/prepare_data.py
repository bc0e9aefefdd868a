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
  ``val-hr-gray/``: the same crops with R = G = B (for the false-colour figure);
* ``val-tex-hr/`` (the textured split, the embedded models' targets): per validation photo, 12 random 512x512
  regions (NumPy ``default_rng(0)``, photos in name order, corners uniform over the photo; a photo of exactly
  512x512 has one region), each Lanczos-downscaled x0.5 to 256x256 (PIL, antialiased), of which the 2 distinct
  regions with the most gradient energy (mean squared finite difference of the BT.601 luma) are kept;
  ``val-tex-hr-gray/``: the same crops with R = G = B.

Usage: python scripts/embedded/prepare_data.py OUT
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SPLIT = Path(__file__).resolve().parents[2] / "docs" / "embedded-split.txt"
DEBIAN = {
    "lomiri-wallpapers-16.04": lambda p: p.suffix == ".jpg",
    "mate-backgrounds": lambda p: p.parent.name == "nature",
    "ukui-wallpapers": lambda p: p.stem in {"calla", "goldfish", "rhythm", "string", "the-mouse"},
}
SKIMAGE = ("rocket", "hubble_deep_field", "stereo_motorcycle", "camera", "brick", "grass", "gravel", "moon", "coins")
CROP, GRID = 256, 3
TEX_REGION, TEX_DRAWS, TEX_KEEP = 512, 12, 2


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


def gradient_energy(rgb: np.ndarray) -> float:
    """Mean squared horizontal and vertical finite difference of the BT.601 luma of an 8-bit (H, W, 3) image."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return float((np.diff(y, axis=0) ** 2).mean() + (np.diff(y, axis=1) ** 2).mean())


def textured_crops(rgb: np.ndarray, rng: np.random.Generator) -> list[tuple[tuple[int, int], np.ndarray]]:
    """The textured split's rule (module docstring): ((top, left), 256x256 RGB crop) of the kept regions."""
    h, w = rgb.shape[:2]
    corners = [(int(rng.integers(h - TEX_REGION + 1)), int(rng.integers(w - TEX_REGION + 1)))
               for _ in range(TEX_DRAWS)]
    crops = {}
    for top, left in dict.fromkeys(corners):  # distinct regions, in the order drawn
        region = Image.fromarray(np.ascontiguousarray(rgb[top:top + TEX_REGION, left:left + TEX_REGION]))
        crops[(top, left)] = np.asarray(region.resize((TEX_REGION // 2,) * 2, Image.Resampling.LANCZOS))
    ranked = sorted(crops.items(), key=lambda item: -gradient_energy(item[1]))
    return ranked[:TEX_KEEP]


def write_pair(out: Path, folder: str, name: str, bgr: np.ndarray) -> None:
    """``bgr`` into ``folder`` and its gray copy (R = G = B, BT.601 luma) into ``folder``-gray."""
    cv2.imwrite(str(out / folder / name), bgr)
    gray = cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(out / f"{folder}-gray" / name), gray)


def main() -> None:
    out = Path(sys.argv[1])
    val_names = {line.split("#")[0].strip() for line in SPLIT.read_text().splitlines()} - {""}
    photos = debian_photos() + skimage_photos(out / "skimage")
    missing = val_names - {p.name for p in photos}
    if missing:
        sys.exit(f"validation photos not found: {sorted(missing)}")
    train = [p for p in photos if p.name not in val_names]
    (out / "train.txt").write_text("".join(f"{p.resolve()}\n" for p in train))
    n = n_tex = 0
    for folder in ("val-hr", "val-hr-gray", "val-tex-hr", "val-tex-hr-gray"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for path in sorted((p for p in photos if p.name in val_names), key=lambda p: p.name):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        for top, left in grid_crops(img):
            write_pair(out, "val-hr", f"{path.stem[:24]}_{top}_{left}.png", img[top:top + CROP, left:left + CROP])
            n += 1
        for (top, left), crop in textured_crops(np.ascontiguousarray(img[:, :, ::-1]), rng):
            write_pair(out, "val-tex-hr", f"{path.stem[:24]}_tex_{top}_{left}.png", crop[:, :, ::-1])
            n_tex += 1
    print(f"{len(train)} training photos ({out / 'train.txt'}), {len(photos) - len(train)} validation photos "
          f"-> {n} crops of {CROP}x{CROP} in {out / 'val-hr'}, {n_tex} textured crops in {out / 'val-tex-hr'}")


if __name__ == "__main__":
    main()
