"""Measure the embedded models on a validation split; write their table, the targets and a comparison sheet.

Splits (prepare_data.py, from the held-out photos of docs/embedded-split.txt), each degraded with
`tadsr degrade --preset realesrgan-test --seed 0` (x4, 64 -> 256) together with its gray copy (R = G = B, for the
colour-on-gray figure):
* ``textured`` (the targets): per photo the 2 most textured of 12 random 512x512 regions, Lanczos-halved to 256;
* ``grid``: native-resolution 256x256 crops on an even grid (31 crops, mostly smooth: sky, petals, a sunset).
Every figure comes from `tadsr evaluate` itself (its ``report.json``): PSNR-Y, SSIM-Y, chroma PSNR (MSE pooled over
the crops), detail (median energy above the LR's Nyquist / the GT's), NIQE and seconds per image on the colour
crops; ``gray`` (colour added, of 255) on the gray copies.

Usage: python scripts/embedded/evaluate.py DATA_DIR WORK_DIR [--split textured|grid] [--teacher T] [--student S]
       [--extra LABEL=MODEL ...] [--doc FILE] [--sheet FILE] [--title TEXT] [--reuse-baselines]
Without --doc the table is printed only; the shipped pair's is docs/embedded-metrics.md (the model card's table).
``--extra`` adds models (``NAME[:STEPS]`` as `tadsr evaluate` takes them) to the table and the sheet, shown as LABEL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from tadsr.baselines import packaged_ncnn_files
from tadsr.data.image_io import ImageData, write_image
from tadsr.evaluate import comparison_sheet, load_float, texture_window

MARK = "<!-- written by scripts/embedded/evaluate.py; do not edit by hand -->"
SPLITS = {"textured": ("val-tex-hr", "valtex"), "grid": ("val-hr", "valset")}
COLOUR_METRICS, GRAY_METRICS = "psnr,ssim,chroma,detail,niqe", "psnr,gray"


def degrade(hr: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    subprocess.run(["tadsr", "degrade", "-i", str(hr), "-o", str(out), "--preset", "realesrgan-test", "--seed", "0",
                    "--gt-size", "256", "-q"], check=True)


def run_models(valset: Path, report: Path, models: list[str], metrics: str) -> dict[str, dict]:
    """`tadsr evaluate` of ``models`` on ``valset``; its report.json (label -> figures)."""
    if report.exists():
        shutil.rmtree(report)
    subprocess.run(["tadsr", "evaluate", "--lr", str(valset / "lq"), "--gt", str(valset / "gt"), "--models",
                    ",".join(models), "--metrics", metrics, "--y-channel", "-o", str(report), "-q"], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((report / "report.json").read_text())


def output_folder(report: Path, label: str) -> Path:
    return report / "outputs" / label.replace(":", "_")


def split_sheet(columns: dict[str, Path], gt_dir: Path, path: Path, crop: int = 96, rows: int = 4) -> None:
    """Rows: up to ``rows`` crops of the split (evenly chosen); columns: each method's folder of outputs
    (``columns``: label -> folder), then the GT; each cell the GT's most textured 96x96 window, enlarged 2x without
    interpolation (``tadsr.evaluate.comparison_sheet``, the sheet of `tadsr evaluate`)."""
    names = sorted(p.name for p in gt_dir.glob("*.png"))
    names = list(dict.fromkeys(names[round(i * (len(names) - 1) / max(1, rows - 1))]
                               for i in range(min(rows, len(names)))))
    gts = [load_float(gt_dir / name) for name in names]
    windows = [texture_window(gt, crop) for gt in gts]
    table = [(label, [load_float(folder / name) for name in names]) for label, folder in columns.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, ImageData(comparison_sheet([*table, ("GT", gts)], crop, zoom=2, windows=windows)))


def targets(fig: dict[str, dict], teacher: str, student: str) -> list[tuple[str, float, str, float]]:
    """(name, measured, '>=' or '<=', bound) of the embedded models' targets (docs/model-card.md)."""
    bic, tea, stu = fig["bicubic"], fig[teacher], fig[student]
    return [
        ("student-1 PSNR-Y >= bicubic - 1.0 dB", stu["psnr"], ">=", bic["psnr"] - 1.0),
        ("student chroma PSNR >= bicubic's - 1.0 dB", stu["chroma"], ">=", bic["chroma"] - 1.0),
        ("student colour on gray <= 1.5", stu["gray"], "<=", 1.5),
        ("student detail >= 0.25", stu["detail"], ">=", 0.25),
        ("student detail <= 1.5", stu["detail"], "<=", 1.5),
        ("student NIQE <= bicubic - 1.0", stu["niqe"], "<=", bic["niqe"] - 1.0),
        ("student-1 >= 10x faster than teacher-15", tea["sec"] / stu["sec"], ">=", 10.0),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--split", choices=list(SPLITS), default="textured")
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--student", default="student")
    parser.add_argument("--extra", action="append", default=[], metavar="LABEL=MODEL")
    parser.add_argument("--doc", type=Path, help="write the table and the targets here")
    parser.add_argument("--sheet", type=Path, help="write a comparison sheet (PNG) here")
    parser.add_argument("--title", default="the embedded pair")
    parser.add_argument("--reuse-baselines", action="store_true",
                        help="keep WORK_DIR's bicubic / Real-ESRGAN results from an earlier run (same split)")
    args = parser.parse_args()
    hr, name = SPLITS[args.split]
    valset, grayset = args.work / name, args.work / f"{name}-gray"
    for source, target in ((args.data / hr, valset), (args.data / f"{hr}-gray", grayset)):
        if not (args.reuse_baselines and (target / "gt").is_dir()):
            degrade(source, target)
    extras = dict(item.split("=", 1) for item in args.extra)
    groups = {"baselines": ["bicubic", *(["realesrgan"] if packaged_ncnn_files() else [])],
              "models": [f"{args.teacher}:15", f"{args.student}:1", *extras.values()]}
    fig, folders = {}, {}
    for kind, models in groups.items():
        report, gray_report = args.work / f"{name}-{kind}", args.work / f"{name}-{kind}-gray"
        if kind == "baselines" and args.reuse_baselines and (gray_report / "report.json").is_file():
            colour, gray = (json.loads((r / "report.json").read_text()) for r in (report, gray_report))
        else:
            colour = run_models(valset, report, models, COLOUR_METRICS)
            gray = run_models(grayset, gray_report, models, GRAY_METRICS)
        for label, figures in colour.items():
            fig[label] = {**figures, "gray": gray[label]["gray"], "sec": figures["seconds_per_image"]}
            folders[label] = output_folder(report, label)
    labels = list(fig)
    shown = {label: next((k for k, v in extras.items() if label.startswith(Path(v.split(":")[0]).stem + ":")), label)
             for label in labels}
    teacher, student = labels[len(groups["baselines"])], labels[len(groups["baselines"]) + 1]
    n = len(list((valset / "gt").glob("*.png")))
    what = {"textured": "textured crops (per held-out photo the 2 most textured of 12 random 512x512 regions, "
                        "Lanczos-halved to 256x256)",
            "grid": "native-resolution 256x256 crops of the held-out photos on an even grid"}[args.split]
    lines = [MARK, "", f"Validation ({args.title}): {n} {what}, `realesrgan-test` x4 (64 -> 256), seed 0; "
             "`tadsr evaluate --metrics psnr,ssim,chroma,detail,niqe --y-channel`: PSNR-Y/SSIM-Y, chroma PSNR "
             "(Cb and Cr, MSE pooled over the crops), detail above the LR's Nyquist / the GT's (median), NIQE, "
             "seconds per image on this CPU (fp32); colour added to the same crops made gray (`gray`: mean "
             "|channel - gray|, of 255).", "",
             "| model | PSNR-Y | SSIM-Y | chroma PSNR | colour on gray | detail | NIQE | s / image |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, f in fig.items():
        lines.append(f"| {shown[label]} | {f['psnr']:.2f} | {f['ssim']:.4f} | {f['chroma']:.2f} | {f['gray']:.2f} | "
                     f"{f['detail']:.3f} | {f['niqe']:.2f} | {f['sec']:.3f} |")
    lines += ["", "| target | measured | bound | met |", "|---|---:|---:|---|"]
    for target, value, op, bound in targets(fig, teacher, student):
        met = value >= bound if op == ">=" else value <= bound
        lines.append(f"| {target} | {value:.3f} | {op} {bound:.3f} | {'yes' if met else 'no'} |")
    text = "\n".join(lines) + "\n"
    if args.doc:
        args.doc.write_text(text)
    if args.sheet:
        split_sheet({shown[label]: folders[label] for label in labels}, valset / "gt", args.sheet)
    print(text)


if __name__ == "__main__":
    main()
