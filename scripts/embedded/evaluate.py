"""Measure the embedded models on the validation split and write docs/embedded-metrics.md (the model card's table).

Validation set: every 256x256 tile of the validation photos (docs/embedded-split.txt, prepared by
prepare_data.py), degraded with `tadsr degrade --preset realesrgan-test --seed 0` (x4, 64 -> 256); measured with
`tadsr evaluate --y-channel --metrics psnr,ssim,niqe`. The issue's targets are checked and written beside the table.

Usage: python scripts/embedded/evaluate.py DATA_DIR WORK_DIR [--teacher T.safetensors --student S.safetensors]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

DOC = Path(__file__).resolve().parents[2] / "docs" / "embedded-metrics.md"
MARK = "<!-- written by scripts/embedded/evaluate.py; do not edit by hand -->"


def tiles(val_dir: Path, out: Path, size: int = 256) -> int:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in sorted(val_dir.glob("*.png")):
        img = np.asarray(Image.open(path).convert("RGB"))
        for top in range(0, img.shape[0] - size + 1, size):
            for left in range(0, img.shape[1] - size + 1, size):
                Image.fromarray(img[top:top + size, left:left + size]).save(out / f"{path.stem}_{top}_{left}.png")
                n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--student", default="student")
    args = parser.parse_args()
    n = tiles(args.data / "val", args.work / "val-hr")
    subprocess.run(["tadsr", "degrade", "-i", str(args.work / "val-hr"), "-o", str(args.work / "valset"), "--preset",
                    "realesrgan-test", "--seed", "0", "--gt-size", "256", "-q"], check=True)
    models = ["bicubic", "realesrgan", f"{args.teacher}:15", f"{args.student}:1"]
    report = args.work / "val-report"
    subprocess.run(["tadsr", "evaluate", "--lr", str(args.work / "valset" / "lq"), "--gt",
                    str(args.work / "valset" / "gt"), "--models", ",".join(models), "--metrics", "psnr,ssim,niqe",
                    "--y-channel", "-o", str(report), "-q"], check=True, stdout=subprocess.DEVNULL)
    rows = list(csv.DictReader(open(report / "per_image.csv")))
    labels = list(dict.fromkeys(r["model"] for r in rows))
    mean = {(m, k): float(np.mean([float(r[k]) for r in rows if r["model"] == m])) for m in labels
            for k in ("psnr", "ssim", "niqe")}
    table = (report / "report.md").read_text().split("\n\n", 2)[2].strip()
    seconds = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 4:
            seconds[cells[0]] = float(cells[-2])
    bic, tea, stu = labels[0], labels[-2], labels[-1]
    checks = [
        ("student-1 PSNR-Y >= teacher-15 PSNR-Y - 0.5 dB", mean[stu, "psnr"], mean[tea, "psnr"] - 0.5, True),
        ("student-1 PSNR-Y >= bicubic PSNR-Y - 1.0 dB", mean[stu, "psnr"], mean[bic, "psnr"] - 1.0, True),
        ("student-1 NIQE <= teacher-15 NIQE", mean[stu, "niqe"], mean[tea, "niqe"], False),
        ("student-1 NIQE <= bicubic NIQE - 1.0", mean[stu, "niqe"], mean[bic, "niqe"] - 1.0, False),
        ("student-1 >= 10x faster than teacher-15", seconds[tea] / seconds[stu], 10.0, True),
    ]
    lines = [MARK, "", f"Validation: {n} tiles of 256x256 from the held-out photos, `realesrgan-test` x4 (64 -> 256),",
             "seed 0; PSNR/SSIM on the Y channel, NIQE; seconds per image on this CPU (2 cores, fp32).", "", table,
             "", "| target | measured | bound | met |", "|---|---:|---:|---|"]
    for name, value, bound, at_least in checks:
        met = value >= bound if at_least else value <= bound
        lines.append(f"| {name} | {value:.3f} | {bound:.3f} | {'yes' if met else 'no'} |")
    DOC.write_text("\n".join(lines) + "\n")
    print(DOC.read_text())


if __name__ == "__main__":
    main()
