"""Measure the embedded models on the validation split; write their table, the targets and a comparison sheet.

Validation set (prepare_data.py): native-resolution 256x256 crops of the held-out photos (docs/embedded-split.txt),
degraded with `tadsr degrade --preset realesrgan-test --seed 0` (x4, 64 -> 256), and the same crops made gray
(R = G = B) and degraded alike, for the false-colour figure. Measured: `tadsr evaluate --y-channel` (PSNR-Y,
SSIM-Y, NIQE, seconds per image) and, from its saved outputs, `tadsr.metrics.detail` (chroma PSNR pooled over the
set, colour added to the gray crops, median detail above the LR's Nyquist / the GT's).

Usage: python scripts/embedded/evaluate.py DATA_DIR WORK_DIR [--teacher T] [--student S] [--doc FILE]
       [--sheet FILE] [--title TEXT] [--reuse-baselines]
Without --doc the table is printed only; the shipped pair's is docs/embedded-metrics.md (the model card's table).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np

from tadsr.baselines import packaged_ncnn_files
from tadsr.metrics.detail import chroma_mse, detail_ratio, false_colour, is_gray, mse_to_psnr

MARK = "<!-- written by scripts/embedded/evaluate.py; do not edit by hand -->"
SHEET_NAMES = ("Garden_672_1152", "picosdeeuropa_by_Aitzol__1096_1504", "Bridge_by_Sander_Klootwi_1096_2048",
               "gravel_256_0")


def rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float64)


def degrade(hr: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    subprocess.run(["tadsr", "degrade", "-i", str(hr), "-o", str(out), "--preset", "realesrgan-test", "--seed", "0",
                    "--gt-size", "256", "-q"], check=True)


def run_models(valset: Path, report: Path, models: list[str], metrics: str) -> None:
    if report.exists():
        shutil.rmtree(report)
    subprocess.run(["tadsr", "evaluate", "--lr", str(valset / "lq"), "--gt", str(valset / "gt"), "--models",
                    ",".join(models), "--metrics", metrics, "--y-channel", "-o", str(report), "-q"], check=True,
                   stdout=subprocess.DEVNULL)


def seconds_per_image(report: Path) -> dict[str, float]:
    table = (report / "report.md").read_text().split("\n\n", 2)[2].strip()
    out = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = float(cells[-2])
    return out


def detail_figures(report: Path, gt_dir: Path, label: str) -> dict[str, float]:
    """chroma (pooled PSNR), gray (mean colour added where the GT is gray), detail (median ratio)."""
    folder = report / "outputs" / label.replace(":", "_")
    cmse, gray, detail = [], [], []
    for gt_path in sorted(gt_dir.glob("*.png")):
        pred, gt = rgb(folder / gt_path.name), rgb(gt_path)
        cmse.append(chroma_mse(pred, gt))
        detail.append(detail_ratio(pred, gt, 4))
        if is_gray(gt):
            gray.append(false_colour(pred))
    return {"chroma": mse_to_psnr(float(np.mean(cmse))), "gray": float(np.mean(gray)) if gray else float("nan"),
            "detail": float(np.median(detail))}


def comparison_sheet(reports: dict[str, Path], valset: Path, path: Path, crop: int = 96) -> None:
    """Rows: a few validation crops; columns: each model's centred crop (``reports``: label -> its report folder),
    then the GT's, enlarged 2x without interpolation; labels on top."""
    labels = [*reports, "GT"]
    rows = []
    for name in SHEET_NAMES:
        tiles = []
        for label in labels:
            src = valset / "gt" if label == "GT" else reports[label] / "outputs" / label.replace(":", "_")
            img = cv2.imread(str(src / f"{name}.png"), cv2.IMREAD_COLOR)
            top, left = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
            tiles.append(cv2.resize(img[top:top + crop, left:left + crop], (2 * crop, 2 * crop),
                                    interpolation=cv2.INTER_NEAREST))
        rows.append(np.concatenate(tiles, 1))
    head = np.full((24, rows[0].shape[1], 3), 255, np.uint8)
    for k, label in enumerate(labels):
        cv2.putText(head, label[-30:], (k * 2 * crop + 4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate([head, *rows], 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--student", default="student")
    parser.add_argument("--doc", type=Path, help="write the table and the targets here")
    parser.add_argument("--sheet", type=Path, help="write a comparison sheet (PNG) here")
    parser.add_argument("--title", default="the embedded pair")
    parser.add_argument("--reuse-baselines", action="store_true",
                        help="keep WORK_DIR's bicubic / Real-ESRGAN results from an earlier run (same validation set)")
    args = parser.parse_args()
    valset, grayset = args.work / "valset", args.work / "valset-gray"
    degrade(args.data / "val-hr", valset)
    degrade(args.data / "val-hr-gray", grayset)
    baselines = ["bicubic", *(["realesrgan"] if packaged_ncnn_files() else [])]
    models = [f"{args.teacher}:15", f"{args.student}:1"]
    fig = {}
    for kind, names in (("baselines", baselines), ("models", models)):
        report, gray_report = args.work / f"val-{kind}", args.work / f"val-{kind}-gray"
        if kind == "models" or not args.reuse_baselines or not (gray_report / "report.md").is_file():
            run_models(valset, report, names, "psnr,ssim,niqe")
            run_models(grayset, gray_report, names, "psnr")
        rows = list(csv.DictReader(open(report / "per_image.csv")))
        seconds = seconds_per_image(report)
        for label in dict.fromkeys(r["model"] for r in rows):
            mean = {k: float(np.mean([float(r[k]) for r in rows if r["model"] == label]))
                    for k in ("psnr", "ssim", "niqe")}
            colour = detail_figures(report, valset / "gt", label)
            colour["gray"] = detail_figures(gray_report, grayset / "gt", label)["gray"]
            fig[label] = {**mean, **colour, "sec": seconds[label], "report": report}
    labels = list(fig)
    n = len(list((valset / "gt").glob("*.png")))
    lines = [MARK, "", f"Validation ({args.title}): {n} native-resolution 256x256 crops of the held-out photos, "
             "`realesrgan-test` x4 (64 -> 256), seed 0; PSNR-Y/SSIM-Y, chroma PSNR (Cb and Cr, MSE pooled over "
             "the crops), colour added to the same crops made gray (mean |channel - gray|, of 255), detail above "
             "the LR's Nyquist / the GT's (median), NIQE, seconds per image on this CPU (fp32).", "",
             "| model | PSNR-Y | SSIM-Y | chroma PSNR | colour on gray | detail | NIQE | s / image |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, f in fig.items():
        lines.append(f"| {label} | {f['psnr']:.2f} | {f['ssim']:.4f} | {f['chroma']:.2f} | {f['gray']:.2f} | "
                     f"{f['detail']:.3f} | {f['niqe']:.2f} | {f['sec']:.3f} |")
    bic, tea, stu = fig[labels[0]], fig[labels[-2]], fig[labels[-1]]
    checks = [
        ("student-1 PSNR-Y >= bicubic - 1.0 dB", stu["psnr"], ">=", bic["psnr"] - 1.0),
        ("teacher-15 PSNR-Y >= bicubic - 2.0 dB", tea["psnr"], ">=", bic["psnr"] - 2.0),
        ("student chroma PSNR >= bicubic's - 1.0 dB", stu["chroma"], ">=", bic["chroma"] - 1.0),
        ("student colour on gray <= 1.5", stu["gray"], "<=", 1.5),
        ("student detail >= 0.25", stu["detail"], ">=", 0.25),
        ("student detail <= 1.5", stu["detail"], "<=", 1.5),
        ("student NIQE <= bicubic - 1.0", stu["niqe"], "<=", bic["niqe"] - 1.0),
        ("student-1 >= 10x faster than teacher-15", tea["sec"] / stu["sec"], ">=", 10.0),
    ]
    lines += ["", "| target | measured | bound | met |", "|---|---:|---:|---|"]
    for name, value, op, bound in checks:
        met = value >= bound if op == ">=" else value <= bound
        lines.append(f"| {name} | {value:.3f} | {op} {bound:.3f} | {'yes' if met else 'no'} |")
    text = "\n".join(lines) + "\n"
    if args.doc:
        args.doc.write_text(text)
    if args.sheet:
        comparison_sheet({label: f["report"] for label, f in fig.items()}, valset, args.sheet)
    print(text)


if __name__ == "__main__":
    main()
