"""Where does a teacher fail? PSNR-Y of its x0-prediction at every timestep, next to bicubic's.

For each code index t = 0..T-1 the ground truth's latent is noised to z_t (Eq. 1, one fixed noise draw), the
teacher predicts x0-hat(z_t, t, y), and the decoded prediction is compared with the GT on the BT.601 Y channel.
At t = T-1 the input is almost pure noise around z_y: x0-hat is the network's estimate of the posterior mean
E[x0 | y], which must beat the bicubic image before sampling or distillation can look right; the one-step student
starts from it. Two sets: training pairs (crops of the training photos, the recipe's degradation) and the
validation split (evaluate.py's degraded crops: ``--split textured``, the default, or ``grid``), where the
detail of each prediction is measured too (``tadsr.metrics.detail``: the median over crops of its energy above the
LR's Nyquist / the GT's): does x0-hat at small t hold the GT's texture, and what do the samples add? The last row
is the teacher's T-step deterministic sample.

Usage: python scripts/embedded/diagnose.py TEACHER DATA_DIR WORK_DIR [--split textured|grid] [--train-count 24]
       [--doc FILE]  (run evaluate.py with the same --split first: it writes WORK_DIR/valtex or WORK_DIR/valset).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tadsr.data.datasets import list_images, load_rgb, to_chw_tensor
from tadsr.data.degradation import preset
from tadsr.data.photos import PhotoCropDataset
from tadsr.diffusion.samplers import sample
from tadsr.diffusion.schedule import q_sample
from tadsr.inference.pipeline import encode_lr
from tadsr.metrics import psnr
from tadsr.metrics.detail import detail_ratio
from tadsr.metrics.full_reference import prepare
from tadsr.model import SRModel, load_model

MARK = "<!-- written by scripts/embedded/diagnose.py; do not edit by hand -->"
SPLITS = {"textured": "valtex", "grid": "valset"}


def psnr_y(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean PSNR-Y of (N, 3, H, W) images in [-1, 1], each quantised to 8 bits as a saved output would be."""
    a = ((pred.clamp(-1, 1) + 1) * 127.5).round() / 255
    b = ((gt + 1) * 127.5).round() / 255
    return float(psnr(*prepare(a, b, y_channel=True)).mean())


def median_detail(pred: torch.Tensor, gt: torch.Tensor, scale: int = 4) -> float:
    """Median over images of ``detail_ratio`` for (N, 3, H, W) images in [-1, 1] (8-bit quantised)."""
    to_np = lambda x: (((x.clamp(-1, 1) + 1) * 127.5).round()).permute(0, 2, 3, 1).double().numpy()  # noqa: E731
    ratios = [detail_ratio(p, g, scale) for p, g in zip(to_np(pred), to_np(gt), strict=True)]
    return float(np.median(ratios))  # as tadsr evaluate's set figure


@torch.no_grad()
def per_timestep(model: SRModel, lq: torch.Tensor, gt: torch.Tensor, batch: int = 8) -> dict[str, list[float]]:
    """PSNR-Y and detail (``median_detail``) of x0-hat at each t, of bicubic and of the T-step sample, on pairs
    (lq, gt) in [-1, 1]: ``{"x0": [psnr per t], "bicubic": [psnr], "sample": [psnr], "detail": {name: value}}``."""
    schedule, denoiser, stage = model.schedule, model.denoiser, model.first_stage
    gen = torch.Generator().manual_seed(0)
    x0 = [[] for _ in range(schedule.num_steps)]
    bicubic, sampled = [], []
    for first in range(0, len(lq), batch):
        y, x = lq[first:first + batch], gt[first:first + batch]
        z_y, z_0 = encode_lr(model, y), stage.encode(x)
        noise = torch.randn(z_y.shape, generator=gen)
        bicubic.append(stage.decode(z_y))
        sampled.append(stage.decode(sample(denoiser, schedule, z_y, y, noise, sampler="deterministic")))
        for t in range(schedule.num_steps):
            steps = torch.full((len(y),), t, dtype=torch.int64)
            z_t = q_sample(schedule, z_0, z_y, steps, noise)
            x0[t].append(stage.decode(denoiser(z_t, steps, y, z_y)))
    outputs = {**{t: torch.cat(p) for t, p in enumerate(x0)}, "bicubic": torch.cat(bicubic),
               "sample": torch.cat(sampled)}
    return {"x0": [psnr_y(outputs[t], gt) for t in range(len(x0))], "bicubic": [psnr_y(outputs["bicubic"], gt)],
            "sample": [psnr_y(outputs["sample"], gt)],
            "detail": {name: median_detail(out, gt) for name, out in outputs.items()}}


def training_pairs(data: Path, count: int, degradation: str) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = PhotoCropDataset(data / "train.txt", preset(degradation), data / "diagnose-cache", gt_size=256,
                               seed=2024)
    items = [dataset.sample(i, 0) for i in range(count)]
    return torch.stack([x["lq"] for x in items]), torch.stack([x["gt"] for x in items])


def folder_pairs(valset: Path) -> tuple[torch.Tensor, torch.Tensor]:
    gts = list_images(valset / "gt")
    lq = torch.stack([to_chw_tensor(load_rgb(valset / "lq" / p.name)) for p in gts])
    gt = torch.stack([to_chw_tensor(load_rgb(p)) for p in gts])
    return lq * 2 - 1, gt * 2 - 1


def table(train: dict[str, list[float]], val: dict[str, list[float]], counts: tuple[int, int]) -> list[str]:
    lines = [f"| t | train x0-hat ({counts[0]}) | train bicubic | train gain | val x0-hat ({counts[1]}) | val bicubic "
             "| val gain | val detail |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tb, vb, detail = train["bicubic"][0], val["bicubic"][0], val["detail"]
    for t, (a, b) in enumerate(zip(train["x0"], val["x0"], strict=True)):
        lines.append(f"| {t} | {a:.2f} | {tb:.2f} | {a - tb:+.2f} | {b:.2f} | {vb:.2f} | {b - vb:+.2f} | "
                     f"{detail[t]:.3f} |")
    a, b = train["sample"][0], val["sample"][0]
    lines.append(f"| {len(train['x0'])}-step sample | {a:.2f} | {tb:.2f} | {a - tb:+.2f} | {b:.2f} | {vb:.2f} | "
                 f"{b - vb:+.2f} | {detail['sample']:.3f} |")
    lines.append(f"| bicubic | | | | | | | {detail['bicubic']:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--split", choices=list(SPLITS), default="textured")
    parser.add_argument("--train-count", type=int, default=24)
    parser.add_argument("--train-degradation", default="realesrgan-mild")
    parser.add_argument("--doc", type=Path)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(args.teacher).float().eval()
    train_lq, train_gt = training_pairs(args.data, args.train_count, args.train_degradation)
    val_lq, val_gt = folder_pairs(args.work / SPLITS[args.split])
    rows = table(per_timestep(model, train_lq, train_gt), per_timestep(model, val_lq, val_gt),
                 (len(train_lq), len(val_lq)))
    head = [MARK, "", f"Per-timestep diagnostic{': ' + args.title if args.title else ''} (`{Path(args.teacher).name}`)."
            " PSNR-Y (dB) of the teacher's x0-hat(z_t, t) against the GT, z_t the GT latent noised by Eq. 1 "
            f"(one fixed noise draw); training pairs: {args.train_degradation} crops of the training photos at GT "
            f"256; validation: the {args.split} realesrgan-test split of evaluate.py. t = T-1 is the posterior-mean "
            "estimate. Val detail: the median over crops of the prediction's energy above the LR's Nyquist / the "
            "GT's.", ""]
    text = "\n".join(head + rows) + "\n"
    if args.doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
