"""A small-scale per-loss ablation of TAD-SR (the paper's Table V, cumulative): L_distill only; + HSD; + a plain
latent discriminator; + the time-aware one (the full method).

Same teacher, same data (the recipe's texture-aware native-resolution crops), same budget (steps, batch, one shared
teacher cache, seed) for the four students; each is measured one-step on the textured validation split that
evaluate.py builds (WORK/valtex, WORK/valtex-gray) with `tadsr evaluate` (its report.json: PSNR-Y, chroma PSNR,
detail above the LR's Nyquist, NIQE; colour on gray). Writes docs/ablation.md (the table), docs/ablation-losses.png
(L_distill, the discriminator's hinge loss and its real/fake margin over training) and docs/ablation-sheet.png
(textured crops of the four students beside bicubic and the GT), whatever the outcome.

Usage: python scripts/embedded/ablation.py DATA_DIR WORK_DIR TEACHER.safetensors [--steps 600] [ARG=VALUE ...]
(run evaluate.py once first: it writes the split; extra key=value overrides go to every row's `tadsr distill`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from evaluate import output_folder, run_models, split_sheet  # noqa: E402  (this folder's evaluate.py)

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROWS = {"L_distill only": ("none", "none"), "+ HSD": ("hsd", "none"), "+ HSD + GAN": ("hsd", "plain"),
        "+ HSD + t-GAN (TAD-SR)": ("hsd", "time-aware")}
SETTINGS = ["data.crop=native", "data.degradation=realesrgan-mild", "data.gray_prob=0.1", "data.texture_ref=8",
            "data.gt_size=64", "run.batch_size=8", "data.workers=1", "distill.teacher_cache=512", "optim.lr=1e-4",
            "optim.warmup=50", "optim.ema_rate=0.995", "run.log_every=10", "run.val_every=100000",
            "run.save_every=200", "run.keep_last=1"]


def train(run: Path, teacher: Path, data: Path, work: Path, steps: int, score: str, disc: str,
          extra: list[str]) -> None:
    command = ["tadsr", "distill", "--preset", "tiny", "--teacher", str(teacher), "--data", str(data / "train.txt"),
               "--out", str(run), "--steps", str(steps), "-q", *SETTINGS, f"data.cache_dir={work / 'photo-cache'}",
               f"distill.score_distill={score}", f"distill.discriminator={disc}", *extra]
    if (run / "checkpoints").is_dir():
        command.append("--resume")
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("overrides", nargs="*", help="key=value for every row's tadsr distill")
    args = parser.parse_args()
    valset, grayset = args.work / "valtex", args.work / "valtex-gray"
    models, curves, cache = {}, {}, None
    for label, (score, disc) in ROWS.items():
        run = args.work / "ablation" / "_".join(label.replace("+", "").replace("(TAD-SR)", "").split()).lower()
        run.mkdir(parents=True, exist_ok=True)
        if cache is not None and not (run / cache.name).exists():  # the same pairs and targets for every row
            shutil.copy(cache, run / cache.name)
        if not (run / "final.safetensors").exists():
            train(run, args.teacher, args.data, args.work, args.steps, score, disc, args.overrides)
        cache = run / "teacher_cache.pt"
        named = run / f"{run.name}.safetensors"  # every row's file is final.safetensors: one label each
        shutil.copy(run / "final.safetensors", named)
        models[label] = f"{named}:1"
        curves[label] = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    report = args.work / "ablation" / "report"
    colour = run_models(valset, report, ["bicubic", *models.values()], "psnr,chroma,detail,niqe")
    gray = run_models(grayset, args.work / "ablation" / "report-gray", ["bicubic", *models.values()], "gray")
    labels = list(colour)  # bicubic, then the rows in order (each model's label is its file's stem + ":1")
    shown = dict(zip(labels, ["bicubic", *models], strict=True))
    lines = ["<!-- written by scripts/embedded/ablation.py -->", "",
             f"Embedded tiny teacher (shipped), {args.steps} distillation steps each (batch 8, GT 64, texture-aware "
             "crops, one teacher cache of 512 pairs, seed 0, lr 1e-4, the paper's lambdas unless stated: "
             f"{' '.join(args.overrides) or 'none'}), one-step students on the textured validation split "
             "(`realesrgan-test` x4, 64 -> 256). Detail: energy above the LR's Nyquist / the GT's (median); colour "
             "on gray: mean |channel - gray| of 255 on the gray copies; lower NIQE is better.", "",
             "| losses | PSNR-Y | chroma PSNR | colour on gray | detail | NIQE | D real-fake margin (last 100 steps) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label in labels:
        f, g = colour[label], gray[label]["gray"]
        log = curves.get(shown[label], [])
        gaps = [r["d_gap"] for r in log if "d_gap" in r and r["step"] > args.steps - 100]
        margin = f"{sum(gaps) / len(gaps):.3f}" if gaps else "-"
        lines.append(f"| {shown[label]} | {f['psnr']:.2f} | {f['chroma']:.2f} | {g:.2f} | {f['detail']:.3f} | "
                     f"{f['niqe']:.2f} | {margin} |")
    (DOCS / "ablation.md").write_text("\n".join(lines) + "\n")
    split_sheet({shown[label]: output_folder(report, label) for label in labels}, valset / "gt",
                     DOCS / "ablation-sheet.png")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    for label, log in curves.items():
        rows = [r for r in log if "distill" in r]
        axes[0].plot([r["step"] for r in rows], [r["distill"] for r in rows], label=label)
        if rows and "d_loss" in rows[0]:
            axes[1].plot([r["step"] for r in rows], [r["d_loss"] for r in rows], label=label)
            axes[2].plot([r["step"] for r in rows], [r["d_gap"] for r in rows], label=label)
    axes[0].set(title="L_distill", xlabel="step", yscale="log")
    axes[1].set(title="discriminator hinge loss (Eq. 12)", xlabel="step")
    axes[2].set(title="mean D(real) - mean D(fake)", xlabel="step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "ablation-losses.png", dpi=80)
    print((DOCS / "ablation.md").read_text())


if __name__ == "__main__":
    main()
