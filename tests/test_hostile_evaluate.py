"""`tadsr evaluate` and `tadsr degrade` on hostile input (issue 32): each bad input is one line
`tadsr: error: FILE-OR-KEY: problem`; bad pairs are named, left out, and the report covers the rest (exit 1); a
setting that cannot work (a malformed --models spec, a full-reference metric with --no-ref, a crop that leaves too
little of every image, --scale 1 for detail) is refused before anything is written; a metric that is undefined for a
pair is written `undefined`, never a meaningless number, and PSNR of identical images is `inf`.

In-process (click's CliRunner) on tiny images: RuntimeWarnings are errors here, so that NumPy may not warn."""

from __future__ import annotations

import csv
import json
import traceback
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tadsr.cli import main

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def _run(*args: str) -> tuple[int, str]:
    """(exit status, stderr) of `tadsr ARGS`; an exception other than the exit is a traceback: the test fails."""
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(*result.exc_info)))
    return result.exit_code, result.stderr


def _image(path: Path, size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _flat(path: Path, size: tuple[int, int], value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def _noisy_copy(src: Path, dst: Path, seed: int = 5) -> None:
    img = np.asarray(Image.open(src)).astype(int)
    noise = np.random.default_rng(seed).integers(-8, 9, img.shape)
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)).save(dst)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tadsr: warning:")]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tadsr: error:")]


def _one_error(code: int, stderr: str) -> str:
    """The refusal before running: exit 1 and stderr one `tadsr: error:` line."""
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("tadsr: error: "), stderr
    return lines[0]


def _rows(out: Path) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in csv.DictReader(open(out / "per_image.csv"))}


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


def test_bad_predictions_are_named_left_out_and_the_report_still_written(tmp_path: Path) -> None:
    pred, gt = _folders(tmp_path)
    out = tmp_path / "report"
    code, stderr = _run("evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out), "-q")
    assert code == 1
    warned = _warnings(stderr)
    assert len(warned) == 2
    assert any("empty.png: empty file; left out" in w for w in warned)
    assert any("small.png: the prediction is 16x16 but the GT is 32x32; left out" in w for w in warned)
    errors = _errors(stderr)
    assert len(errors) == 1 and "2 of 4 pair(s) left out" in errors[0]
    report = (out / "report.md").read_text()
    assert "2 image(s)" in report and "2 pair(s) left out of the means" in report
    assert sorted(_rows(out)) == ["good", "other"]


def test_two_images_with_the_same_name_are_an_error_naming_both(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _image(pred / "a.png")
    _image(pred / "a.jpg")
    _image(gt / "a.png")
    line = _one_error(*_run("evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "r"), "-q"))
    assert "a.jpg" in line and "a.png" in line and "same name" in line


def test_degrade_writes_one_pair_per_name_and_names_the_clash(tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    _image(hr / "a.png", (64, 64))
    _image(hr / "a.jpg", (64, 64))
    _image(hr / "b.png", (64, 64))
    out = tmp_path / "set"
    result = CliRunner().invoke(main, ["degrade", "-i", str(hr), "-o", str(out), "--gt-size", "32", "-q"])
    assert result.exit_code == 1
    errors = _errors(result.stderr)
    assert len(errors) == 1 and "would overwrite that of" in errors[0]
    assert "2 pair(s) written" in result.stdout and "1 failed" in result.stdout
    assert sorted(p.name for p in (out / "gt").iterdir()) == ["a.png", "b.png"]


# --- --models: every malformed spec is one line naming it, before anything runs -------------------------------

MALFORMED_MODELS = [
    ("student:abc", "'student:abc': STEPS must be a whole number, not 'abc'"),
    ("student:fast", "'student:fast': STEPS must be a whole number, not 'fast'"),  # an option after the colon
    ("student:1:fp16", "'student:1:fp16': STEPS must be a whole number, not 'fp16'"),
    ("student:-1", "'student:-1': STEPS must be a whole number"),
    ("student:1.5", "'student:1.5': STEPS must be a whole number"),
    ("student:0", "'student:0': STEPS must be 1 or more"),
    (":1", "':1': no NAME before ':'"),
    ("student:", "'student:': no STEPS after ':'"),
    ("bicubic:4", "'bicubic:4': bicubic takes no STEPS"),
    ("realesrgan:1", "'realesrgan:1': realesrgan takes no STEPS"),
    ("bicubic,,student:1", "'bicubic,,student:1': an empty entry"),
    ("bicubic,", "'bicubic,': an empty entry"),
    ("", "--models: no model to run"),
    ("studnet:1", "'studnet:1': studnet is neither bicubic, realesrgan, student, teacher nor an existing model"),
]
DUPLICATE_MODELS = [
    ("bicubic,bicubic", "bicubic is given twice"),
    ("student:1,student:01", "student:1 is given twice"),
    ("a/final.safetensors:1,b/final.safetensors:1", "would share the label final:1"),
]


@pytest.mark.parametrize(("spec", "message"), MALFORMED_MODELS + DUPLICATE_MODELS,
                         ids=[s or "empty" for s, _ in MALFORMED_MODELS + DUPLICATE_MODELS])
def test_a_malformed_models_spec_is_one_line_naming_it(tmp_path: Path, spec: str, message: str) -> None:
    _image(tmp_path / "lq" / "a.png", (8, 8))
    _image(tmp_path / "gt" / "a.png", (32, 32))
    out = tmp_path / "r"
    line = _one_error(*_run("evaluate", "--lr", str(tmp_path / "lq"), "--gt", str(tmp_path / "gt"), "--models", spec,
                            "-o", str(out), "-q"))
    assert line.startswith("tadsr: error: --models") and message in line
    if (spec, message) in MALFORMED_MODELS:
        assert "expected NAME[:STEPS]" in line  # the form expected
    assert not out.exists()  # refused before anything was written


def test_a_step_count_the_model_does_not_run_is_refused_before_running(tmp_path: Path,
                                                                      tiny_student_file: Path) -> None:
    _image(tmp_path / "lq" / "a.png", (8, 8))
    _image(tmp_path / "gt" / "a.png", (32, 32))
    line = _one_error(*_run("evaluate", "--lr", str(tmp_path / "lq"), "--gt", str(tmp_path / "gt"), "--models",
                            f"bicubic,{tiny_student_file}:3", "-o", str(tmp_path / "r"), "-q"))
    assert f"--models '{tiny_student_file}:3'" in line and "not 3" in line
    assert not (tmp_path / "r").exists()  # bicubic did not run first


# --- metrics x crop borders that leave too little ---------------------------------------------------------------

# (metric, options, crop border): a 64x64 pair keeps too little for the metric, a 224x224 pair enough
TOO_SMALL = [
    ("psnr", [], 32),
    ("ssim", [], 27),
    ("chroma", [], 32),
    ("gray", [], 40),
    ("detail", ["--scale", "4"], 29),
    ("niqe", [], 0),
    ("niqe", [], 16),
]


def _sized_set(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for name, side in (("a", 64), ("b", 64), ("big", 224)):
        _image(gt / f"{name}.png", (side, side), seed=side)
        _noisy_copy(gt / f"{name}.png", pred / f"{name}.png")
    return gt, pred


@pytest.mark.parametrize(("metric", "options", "crop"), TOO_SMALL, ids=[f"{m}-crop{c}" for m, _, c in TOO_SMALL])
def test_a_pair_too_small_for_a_metric_after_the_crop_is_left_out_in_one_line(
        tmp_path: Path, metric: str, options: list[str], crop: int) -> None:
    gt, pred = _sized_set(tmp_path)
    out = tmp_path / "r"
    code, stderr = _run("evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", metric, "--crop-border",
                        str(crop), *options, "-o", str(out), "-q")
    assert code == 1
    warned = _warnings(stderr)
    assert len(warned) == 2, stderr
    for name, line in zip(("a", "b"), sorted(warned), strict=True):
        assert f"{pred / name}.png: 64x64" in line and metric in line and "needs" in line and line.endswith("left out")
        assert (f"with --crop-border {crop} leaves {max(64 - 2 * crop, 0)} pixels a side" in line if crop
                else "too small for niqe" in line)
    assert "2 of 3 pair(s) left out" in _errors(stderr)[0]
    assert list(_rows(out)) == ["big"]  # the rest is measured
    assert "2 pair(s) left out of the means" in (out / "report.md").read_text()


@pytest.mark.parametrize(("metric", "options", "crop"), TOO_SMALL, ids=[f"{m}-crop{c}" for m, _, c in TOO_SMALL])
def test_a_crop_too_large_for_every_image_is_one_line_before_running(
        tmp_path: Path, metric: str, options: list[str], crop: int) -> None:
    gt, pred = _sized_set(tmp_path)
    for folder in (gt, pred):
        (folder / "big.png").unlink()
    out = tmp_path / "r"
    line = _one_error(*_run("evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", metric, "--crop-border",
                            str(crop), *options, "-o", str(out), "-q"))
    start = f"--crop-border {crop} leaves too little of every image for {metric}" if crop else "--metrics niqe:"
    assert line.startswith(f"tadsr: error: {start}") and "64x64" in line and "needs" in line
    assert not out.exists()


def test_models_without_gt_are_checked_at_their_output_size(tmp_path: Path) -> None:
    """--lr --no-ref: the outputs' size (LR x the model's scale) is known before running; 16x16 LR images x4 are too
    small for NIQE, refused in one line before bicubic runs."""
    _image(tmp_path / "lq" / "a.png", (16, 16))
    line = _one_error(*_run("evaluate", "--lr", str(tmp_path / "lq"), "--no-ref", "--models", "bicubic", "-o",
                            str(tmp_path / "r"), "-q"))
    assert f"the largest, the x4 output of {tmp_path / 'lq' / 'a.png'}, is 64x64; niqe needs two whole" in line
    assert not (tmp_path / "r").exists()


def test_lpips_knows_its_least_size() -> None:
    """LPIPS (its weights are user files, so not through the command here): the AlexNet head needs 31x31."""
    import torch

    from tadsr.data.image_io import ImageError
    from tadsr.evaluate import MetricSet
    from tadsr.metrics.lpips import LPIPS

    metrics = MetricSet(["lpips"], crop_border=2, lpips=lambda a, b: torch.zeros(1), lpips_net="alex")
    img = np.random.default_rng(0).random((34, 34, 3))
    with pytest.raises(ImageError, match="34x34 with --crop-border 2 leaves 30 pixels a side; lpips needs 31x31"):
        metrics.measure(img, img)
    assert metrics.measure(np.pad(img, ((0, 1), (0, 1), (0, 0))), np.pad(img, ((0, 1), (0, 1), (0, 0)))) == {
        "lpips": 0.0}
    with pytest.raises(ValueError, match="needs 31x31"):
        LPIPS("alex")(torch.zeros(1, 3, 30, 40), torch.zeros(1, 3, 30, 40))


# --- --no-ref: full-reference metrics are refused by name ------------------------------------------------------

FULL_REFERENCE = ["psnr", "ssim", "lpips", "chroma", "gray", "detail", "fid", "psnr,ssim", "niqe,psnr"]


@pytest.mark.parametrize("metrics", FULL_REFERENCE)
def test_a_full_reference_metric_with_no_ref_is_refused_by_name(tmp_path: Path, metrics: str) -> None:
    _image(tmp_path / "pred" / "a.png", (32, 32))
    out = tmp_path / "r"
    line = _one_error(*_run("evaluate", "--pred", str(tmp_path / "pred"), "--no-ref", "--metrics", metrics,
                            "-o", str(out), "-q"))
    refused = ",".join(m for m in metrics.split(",") if m != "niqe")
    assert f"--metrics {refused}: compare" in line and "--no-ref has none" in line and "niqe" in line
    assert not out.exists()


def test_no_ref_measures_niqe_by_default(tmp_path: Path) -> None:
    _image(tmp_path / "pred" / "a.png", (192, 96))
    out = tmp_path / "r"
    code, stderr = _run("evaluate", "--pred", str(tmp_path / "pred"), "--no-ref", "-o", str(out), "-q")
    assert code == 0, stderr
    assert float(_rows(out)["a"]["niqe"]) > 0


# --- settings that would be dropped are refused --------------------------------------------------------------

UNUSED = [
    (["--pred", "pred", "--gt", "gt", "--no-ref"], "--gt"),
    (["--pred", "pred", "--gt", "gt", "--models", "bicubic"], "--models"),
    (["--pred", "pred", "--gt", "gt", "--tile", "64"], "--tile"),
    (["--pred", "pred", "--gt", "gt", "--dtype", "bf16"], "--dtype"),
    (["--pred", "pred", "--gt", "gt", "--scale", "2"], "--scale 2: only the detail metric"),
    (["--lr", "lq", "--gt", "gt", "--metrics", "detail", "--scale", "2"], "--scale 2: for --pred"),
    (["--pred", "pred", "--gt", "gt", "--lpips-net", "vgg"], "--lpips-net"),
    (["--lr", "lq", "--gt", "gt", "--realesrgan-weights", "w.pth"], "--realesrgan-weights"),
    (["--pred", "pred", "--gt", "gt", "--metrics", "psnr,psnr"], "--metrics: psnr given twice"),
    (["--pred", "pred", "--gt", "gt", "--metrics", ","], "--metrics: no metric given"),
    (["--pred", "pred", "--gt", "gt", "--metrics", ""], "--metrics: no metric given"),
    (["--pred", "pred", "--gt", "gt", "--metrics", "fid", "--crop-border", "4"], "--crop-border 4: fid"),
]


@pytest.mark.parametrize(("args", "start"), UNUSED, ids=[s.split(":")[0] for _, s in UNUSED])
def test_a_setting_that_would_be_dropped_is_refused(tmp_path: Path, args: list[str], start: str) -> None:
    for folder in ("pred", "gt", "lq"):
        _image(tmp_path / folder / "a.png", (32, 32))
    (tmp_path / "w.pth").write_bytes(b"")
    args = [str(tmp_path / a) if a in ("pred", "gt", "lq", "w.pth") else a for a in args]
    line = _one_error(*_run("evaluate", *args, "-o", str(tmp_path / "r"), "-q"))
    assert line.startswith("tadsr: error: " + start)
    assert not (tmp_path / "r").exists()


# --- degenerate inputs: never a meaningless number -------------------------------------------------------------

def test_detail_at_scale_1_is_refused_before_running(tmp_path: Path) -> None:
    _image(tmp_path / "gt" / "a.png", (32, 32))
    _noisy_copy(tmp_path / "gt" / "a.png", tmp_path / "pred" / "a.png")
    line = _one_error(*_run("evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--metrics",
                            "psnr,detail", "--scale", "1", "-o", str(tmp_path / "r"), "-q"))
    assert line.startswith("tadsr: error: --scale 1: detail") and "empty at x1" in line


# (metric, mode, the flat image's size): the metric's denominator is degenerate for the flat pair
UNDEFINED = [("detail", "gt", (64, 64)), ("niqe", "pred", (192, 96))]


@pytest.mark.parametrize(("metric", "flat", "size"), UNDEFINED, ids=[m for m, _, _ in UNDEFINED])
def test_a_metric_undefined_for_a_pair_is_written_undefined_not_a_number(
        tmp_path: Path, metric: str, flat: str, size: tuple[int, int]) -> None:
    """detail of a flat GT divided by ~0 (it gave 1e17), NIQE of a flat image took a covariance of nothing: NaN,
    written ``undefined``, named in one line and left out of the set figure, which the other pair gives."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _image(gt / "textured.png", size, seed=1)
    _noisy_copy(gt / "textured.png", pred / "textured.png")
    if flat == "gt":
        _flat(gt / "flat.png", size)
        _image(pred / "flat.png", size, seed=2)
    else:
        _flat(pred / "flat.png", size)
        _image(gt / "flat.png", size, seed=2)
    out = tmp_path / "r"
    code, stderr = _run("evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", f"psnr,{metric}", "-o",
                        str(out), "-q")
    assert code == 0, stderr
    warned = _warnings(stderr)
    assert len(warned) == 1 and warned[0].startswith(f"tadsr: warning: {pred / 'flat.png'}: {metric} undefined: ")
    rows = _rows(out)
    assert rows["flat"][metric] == "undefined" and float(rows["flat"]["psnr"]) > 0
    value = float(rows["textured"][metric])
    assert 0 < value < 1e3
    summary = json.loads((out / "report.json").read_text())["pred"]
    assert summary[metric] == pytest.approx(value, rel=1e-5) and summary["undefined"] == {metric: 1}
    report = (out / "report.md").read_text()
    assert f"- {metric}: undefined for 1 of 2 pair(s) of pred" in report


def test_undefined_for_every_pair_is_undefined_in_the_table(tmp_path: Path) -> None:
    _flat(tmp_path / "gt" / "a.png", (32, 32))
    _image(tmp_path / "pred" / "a.png", (32, 32))
    out = tmp_path / "r"
    code, stderr = _run("evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--metrics",
                        "detail", "-o", str(out), "-q")
    assert code == 0 and "detail undefined" in stderr
    assert "| pred | undefined |" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["pred"]["detail"] == "undefined"


@pytest.mark.parametrize("metric", ["psnr", "chroma"])
def test_identical_images_are_inf_everywhere(tmp_path: Path, metric: str) -> None:
    """PSNR (and chroma PSNR) of identical images is inf: in the CSV, the table and report.json (a string, for
    strict JSON); a mean over it is inf; chroma's pooled MSE stays finite while another pair has an error."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _image(gt / "same.png", (32, 32), seed=1)
    _image(pred / "same.png", (32, 32), seed=1)
    out = tmp_path / "r"
    code, stderr = _run("evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", metric, "-o", str(out), "-q")
    assert code == 0 and not _warnings(stderr), stderr
    assert _rows(out)["same"][metric] == "inf"
    assert "| pred | inf |" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["pred"][metric] == "inf"
    _image(gt / "other.png", (32, 32), seed=3)
    _noisy_copy(gt / "other.png", pred / "other.png")
    code, _ = _run("evaluate", "--pred", str(pred), "--gt", str(gt), "--metrics", metric, "-o", str(out), "-q")
    figure = json.loads((out / "report.json").read_text())["pred"][metric]
    assert code == 0 and (figure == "inf" if metric == "psnr" else 20 < figure < 80)
