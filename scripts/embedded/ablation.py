"""A small-scale reproduction of the paper's ablation (Table V): SDS+GAN, SDS+t-GAN, HSD+GAN, HSD+t-GAN.

Same teacher, same data (the recipe's native-resolution crops), same budget (steps, batch, one shared teacher cache)
for the four students; each is measured one-step on the validation set that evaluate.py builds (WORK/valset), with
`tadsr evaluate` (PSNR-Y, NIQE) and evaluate.py's detail figures (chroma PSNR, detail above the LR's Nyquist).
Writes docs/ablation.md (the table) and docs/ablation-losses.png (the loss curves), whatever the outcome.

Usage: python scripts/embedded/ablation.py DATA_DIR WORK_DIR TEACHER.safetensors [--steps 200]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from evaluate import detail_figures  # noqa: E402  (this folder's evaluate.py)

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROWS = {"SDS + GAN": ("sds", "plain"), "SDS + t-GAN": ("sds", "time-aware"),
        "HSD + GAN": ("hsd", "plain"), "HSD + t-GAN": ("hsd", "time-aware")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    results, curves = {}, {}
    cache = None
    for label, (score, disc) in ROWS.items():
        run = args.work / "ablation" / label.replace(" + ", "_").replace("-", "")
        if cache is not None and not (run / cache.name).exists():  # the same pairs and targets for every row
            run.mkdir(parents=True, exist_ok=True)
            shutil.copy(cache, run / cache.name)
        if not (run / "final.safetensors").exists():
            subprocess.run(["tadsr", "distill", "--preset", "tiny", "--teacher", str(args.teacher), "--data",
                            str(args.data / "train.txt"), "--out", str(run), "--steps", str(args.steps), "-q",
                            "data.crop=native", "data.degradation=realesrgan-mild", "data.gray_prob=0.1",
                            f"data.cache_dir={args.work / 'photo-cache'}",
                            "data.gt_size=64", "run.batch_size=8", "data.workers=1", "distill.teacher_cache=256",
                            f"distill.score_distill={score}", f"distill.discriminator={disc}", "optim.lr=1e-4",
                            "optim.lr_d=1e-4", "optim.warmup=50", "optim.ema_rate=0.995", "run.log_every=5",
                            "run.val_every=100000", "run.save_every=100000", "run.seed=7"], check=True)
        report = run / "val-report"
        subprocess.run(["tadsr", "evaluate", "--lr", str(args.work / "valset" / "lq"), "--gt",
                        str(args.work / "valset" / "gt"), "--models", f"{run / 'final.safetensors'}:1",
                        "--metrics", "psnr,ssim,niqe", "--y-channel", "-o", str(report), "-q"], check=True,
                       stdout=subprocess.DEVNULL)
        cache = run / "teacher_cache.pt"
        rows = list(csv.DictReader(open(report / "per_image.csv")))
        results[label] = {k: float(np.mean([float(r[k]) for r in rows])) for k in ("psnr", "ssim", "niqe")}
        results[label].update(detail_figures(report, args.work / "valset" / "gt", rows[0]["model"]))
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        curves[label] = [(r["step"], r["distill"], r.get("d_loss")) for r in log if "distill" in r]
    lines = ["<!-- written by scripts/embedded/ablation.py -->", "",
             f"Embedded tiny teacher, {args.steps} distillation steps each (batch 8, GT 64, one teacher cache of 256 "
             "pairs, seed 7), one-step students on the validation crops (`realesrgan-test` x4, 64 -> 256). Detail: "
             "energy above the LR's Nyquist / the GT's (median); lower NIQE is better.",
             "", "| score distillation + discriminator | PSNR-Y | SSIM-Y | chroma PSNR | detail | NIQE |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['psnr']:.3f} | {v['ssim']:.4f} | {v['chroma']:.2f} | {v['detail']:.3f} | {v['niqe']:.3f} |"
              for k, v in results.items()]
    (DOCS / "ablation.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for label, points in curves.items():
        steps = [p[0] for p in points]
        axes[0].plot(steps, [p[1] for p in points], label=label)
        if points[0][2] is not None:
            axes[1].plot(steps, [p[2] for p in points], label=label)
    axes[0].set(title="L_distill", xlabel="step", yscale="log")
    axes[1].set(title="discriminator hinge loss", xlabel="step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(DOCS / "ablation-losses.png", dpi=80)
    print((DOCS / "ablation.md").read_text())


if __name__ == "__main__":
    main()
