"""The embedded teacher/student: load offline, upscale, `tadsr demo --quick`, and the model card's table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tadsr
from tadsr.backends import open_model
from tadsr.cli import main
from tadsr.model import load_model, resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_models_load_offline_and_upscale() -> None:
    for name, role, steps in (("student", "student", 1), ("teacher", "teacher", 15)):
        model = load_model(resolve_model_path(name))
        assert model.config.role == role and model.config.schedule.num_steps == 15
        image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
        out = tadsr.Upscaler(open_model(name, device="cpu", steps=steps), tile=0).upscale(image)
        assert out.shape == (148, 212, 3) and out.dtype == np.uint8
        assert 10 < out.mean() < 245  # an image, not a blank


def test_embedded_weights_fit_the_size_budget() -> None:
    files = [resolve_model_path(n) for n in ("student", "teacher")]
    assert sum(f.stat().st_size for f in files) <= 40_000_000


def test_default_model_of_upscale_is_the_embedded_student(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(tmp_path / "x.png")
    result = CliRunner().invoke(main, ["upscale", "-i", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "o" / "x.png").is_file()


@pytest.mark.slow
def test_demo_quick_writes_its_report(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--quick", "-o", str(tmp_path / "demo"), "-q"])
    assert result.exit_code == 0, result.stderr
    report = (tmp_path / "demo" / "report.md").read_text()
    for label in ("| bicubic |", "| teacher:15 |", "| student:1 |"):
        assert label in report
    assert (tmp_path / "demo" / "per_image.csv").read_text().startswith("model,name,psnr,ssim,niqe")
    assert (tmp_path / "demo" / "sheet.png").is_file()


def test_model_card_table_is_the_scripts_output() -> None:
    """docs/embedded-metrics.md must be written by scripts/embedded/evaluate.py in its format, and the model card
    must show that same table."""
    metrics = (ROOT / "docs" / "embedded-metrics.md").read_text()
    assert metrics.startswith("<!-- written by scripts/embedded/evaluate.py")
    header = next(line for line in metrics.splitlines() if line.startswith("| model |"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["model", "PSNR-Y", "SSIM-Y", "chroma PSNR",
                                                                 "colour on gray", "detail", "NIQE", "s / image"]
    rows = [line for line in metrics.splitlines() if re.match(r"\| (bicubic|realesrgan|teacher:15|student:1) \|", line)]
    assert [r.split("|")[1].strip() for r in rows] == ["bicubic", "realesrgan", "teacher:15", "student:1"]
    assert "| target | measured | bound | met |" in metrics
    card = (ROOT / "docs" / "model-card.md").read_text()
    assert all(row in card for row in rows)


def test_diagnostic_table_has_every_timestep_and_consistent_gains() -> None:
    """docs/embedded-diagnostic.md (scripts/embedded/diagnose.py): one row per code index t = 0..T-1 and one for
    the T-step sample; every gain is x0-hat's PSNR-Y minus bicubic's."""
    text = (ROOT / "docs" / "embedded-diagnostic.md").read_text()
    assert text.startswith("<!-- written by scripts/embedded/diagnose.py")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if re.match(r"\| (\d+|\d+-step sample) \|", line)]
    assert [r[0] for r in rows] == [str(t) for t in range(15)] + ["15-step sample"]
    for row in rows:
        train, train_bic, train_gain, val, val_bic, val_gain, detail = map(float, row[1:])
        assert abs(train - train_bic - train_gain) < 0.011 and abs(val - val_bic - val_gain) < 0.011
        assert 10 < train < 60 and 10 < val < 60 and 0 <= detail < 10


def test_shipped_student_adds_no_colour_to_a_gray_photo() -> None:
    """A real test of the shipped weights: a gray photo (R = G = B) comes out gray within 1.5 levels of 255 on
    average (the embedded models' colour target)."""
    from PIL import Image

    from tadsr.metrics.detail import false_colour

    photo = np.asarray(Image.open(ROOT / "tests" / "data" / "chelsea_crop.png").convert("L").convert("RGB"))
    lr = np.asarray(Image.fromarray(photo).resize((photo.shape[1] // 4, photo.shape[0] // 4), Image.BICUBIC))
    out = tadsr.Upscaler(open_model("student", device="cpu"), tile=0).upscale(lr)
    assert out.shape[:2] == (lr.shape[0] * 4, lr.shape[1] * 4)
    assert false_colour(out.astype(np.float64)) <= 1.5


def test_an_install_without_embedded_weights_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.resources

    from tadsr.model import ModelNotFoundError

    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(ModelNotFoundError, match="no embedded student model in this install"):
        resolve_model_path(None)
