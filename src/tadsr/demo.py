"""`tadsr demo`: the embedded one-step student against bicubic, its 15-step teacher and Real-ESRGAN, in minutes.

The bundled photos (``tadsr/demo_photos``, not in the training data) are degraded with the ``realesrgan-test``
preset (x4, seed 0) and super-resolved by every method; ``tadsr evaluate`` then writes ``report.md``,
``per_image.csv`` and ``sheet.png`` into the output folder (PSNR and SSIM on Y, NIQE, and the artefact figures:
chroma PSNR, colour added to gray photos where one is gray, detail above the LR's Nyquist).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from tadsr.backends import model_info
from tadsr.baselines import packaged_ncnn_files
from tadsr.data.degradation import preset
from tadsr.data.testset import build_test_set
from tadsr.evaluate import build_metric_set, evaluate


def demo_photos() -> list[Path]:
    folder = Path(str(files("tadsr") / "demo_photos"))
    return sorted(folder.glob("*.png"))


def run_demo(out_dir: Path, quick: bool = False, device: str = "cpu", show_progress: bool = True,
             report: Callable[[str], None] = print) -> Path:
    """Build the LR/GT set, run the methods, write the report; returns the path of report.md."""
    model_info("student")  # fail early, with the clear message, if this install has no embedded model
    model_info("teacher")
    photos = demo_photos()[:1] if quick else demo_photos()
    hr_dir = out_dir / "photos"
    hr_dir.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        (hr_dir / photo.name).write_bytes(photo.read_bytes())
    build_test_set(hr_dir, out_dir, preset("realesrgan-test"), "realesrgan-test", seed=0, gt_size=256,
                   show_progress=False, report=report)
    models = ["bicubic", "teacher:15", "student:1"]
    if packaged_ncnn_files() is not None:
        models.insert(1, "realesrgan")
    metrics = build_metric_set(["psnr", "ssim", "niqe", "chroma", "gray", "detail"], y_channel=True,
                               device=device)
    evaluate(out_dir, out_dir / "gt", metrics, lr_dir=out_dir / "lq", models=models, device=device,
             report=report, show_progress=show_progress)
    return out_dir / "report.md"
