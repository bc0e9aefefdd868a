"""`tadsr evaluate` and `tadsr degrade` keep going past bad pairs: each is named in one line and left out, the
report covers the rest and says how many were left out, the exit status is 1 (issue class 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

TADSR = str(Path(sys.executable).parent / "tadsr")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TADSR, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _image(path: Path, size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for name in ("good", "empty", "small", "other"):
        _image(gt / f"{name}.png", seed=1)
    _image(pred / "good.png", seed=2)
    (pred / "empty.png").write_bytes(b"")
    _image(pred / "small.png", (16, 16))  # not the GT's size
    _image(pred / "other.png", seed=3)
    return pred, gt


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tadsr: warning:")]


def test_bad_predictions_are_named_left_out_and_the_report_still_written(tmp_path: Path) -> None:
    pred, gt = _folders(tmp_path)
    out = tmp_path / "report"
    result = _run("evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out), "-q")
    assert result.returncode == 1
    warned = _warnings(result.stderr)
    assert len(warned) == 2
    assert any("empty.png: empty file; left out" in w for w in warned)
    assert any("small.png: the prediction is 16x16 but the GT is 32x32; left out" in w for w in warned)
    errors = [line for line in result.stderr.splitlines() if line.startswith("tadsr: error:")]
    assert len(errors) == 1 and "2 of 4 pair(s) left out" in errors[0]
    report = (out / "report.md").read_text()
    assert "2 image(s)" in report and "2 pair(s) left out of the means" in report
    rows = (out / "per_image.csv").read_text().splitlines()
    assert sorted(r.split(",")[1] for r in rows[1:]) == ["good", "other"]


def test_a_crop_border_larger_than_the_image_is_one_line_per_pair(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    _image(pred / "a.png")
    _image(gt / "a.png", seed=1)
    result = _run("evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "r"), "-q",
                  "--crop-border", "20")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "a.png: 32x32 with --crop-border 20 leaves 0 pixels a side" in _warnings(result.stderr)[0]


def test_two_images_with_the_same_name_are_an_error_naming_both(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    _image(pred / "a.png")
    _image(pred / "a.jpg")
    _image(gt / "a.png")
    result = _run("evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "r"), "-q")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1
    assert "a.jpg" in lines[0] and "a.png" in lines[0] and "same name" in lines[0]


def test_degrade_writes_one_pair_per_name_and_names_the_clash(tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    _image(hr / "a.png", (64, 64))
    _image(hr / "a.jpg", (64, 64))
    _image(hr / "b.png", (64, 64))
    out = tmp_path / "set"
    result = _run("degrade", "-i", str(hr), "-o", str(out), "--gt-size", "32", "-q")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("tadsr: error:")]
    assert len(errors) == 1 and "would overwrite that of" in errors[0]
    assert "2 pair(s) written" in result.stdout and "1 failed" in result.stdout
    assert sorted(p.name for p in (out / "gt").iterdir()) == ["a.png", "b.png"]
