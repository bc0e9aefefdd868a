"""Prepare the photos the embedded teacher and student are trained on (issue: embedded default model).

Sources, and only these: the Debian packages lomiri-wallpapers-16.04 (/usr/share/backgrounds/*.jpg) and
mate-backgrounds (/usr/share/backgrounds/mate/nature/*.jpg). The validation split is the fixed list in
docs/embedded-split.txt (about 10%); every other photo is training data. Photos are area-downscaled to at most
MAX_SIDE pixels on the long side (the originals are 4-16 MP: decoding them would dominate CPU training) and written
as PNG to OUT/train and OUT/val.

Usage: python scripts/embedded/prepare_data.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2

SOURCES = [Path("/usr/share/backgrounds"), Path("/usr/share/backgrounds/mate/nature")]
SPLIT = Path(__file__).resolve().parents[2] / "docs" / "embedded-split.txt"
MAX_SIDE = 640


def main() -> None:
    out = Path(sys.argv[1])
    val_names = {line.split("#")[0].strip() for line in SPLIT.read_text().splitlines()} - {""}
    photos = sorted(p for folder in SOURCES for p in folder.glob("*.jpg"))
    if len(photos) < 20:
        sys.exit("install the photos first: apt-get install -y lomiri-wallpapers-16.04 mate-backgrounds")
    counts = {"train": 0, "val": 0}
    for path in photos:
        split = "val" if path.name in val_names else "train"
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        scale = MAX_SIDE / max(h, w)
        if scale < 1:
            img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        (out / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / split / f"{path.stem}.png"), img)
        counts[split] += 1
    missing = val_names - {p.name for p in photos}
    if missing:
        sys.exit(f"validation photos not found: {sorted(missing)}")
    print(f"{counts['train']} training and {counts['val']} validation photos in {out}")


if __name__ == "__main__":
    main()
