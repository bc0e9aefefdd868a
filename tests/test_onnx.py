"""`tadsr export` and the onnxruntime path: exported graphs give the PyTorch model's pictures, tiled and untiled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import CliExport

pytest.importorskip("onnxruntime")  # the test extra installs tadsr[onnx]: this runs in CI
pytest.importorskip("onnxscript")

from tadsr.backends import open_model  # noqa: E402
from tadsr.cli import main  # noqa: E402
from tadsr.errors import ConfigError  # noqa: E402
from tadsr.export import export_onnx, read_metadata  # noqa: E402
from tadsr.inference.upscaler import Upscaler  # noqa: E402
from tadsr.model import load_model  # noqa: E402


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def exported(onnx_student_file: Path) -> Path:
    """``vq_student_file`` exported with a dynamic size (conftest: one export for the session)."""
    return onnx_student_file


def _photo(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / 30.0
    img = np.stack([np.sin(3 * x + y), np.cos(2 * y), np.sin(x * y)], axis=2) * 0.4 + 0.5
    return (img * 255).round().astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("tile", [0, 32])
def test_the_onnx_file_gives_the_pytorch_pictures(exported: Path, vq_student_file: Path, tile: int) -> None:
    """Same seed, same tiling: onnxruntime's output equals PyTorch's within 1e-3 (of [0, 1]), at a size other than
    the one exported (the size is dynamic), whole and tiled."""
    photo = _photo(45, 70)
    torch_up = Upscaler(open_model(vq_student_file, device="cpu"), tile=tile, seed=3)
    onnx_up = Upscaler(open_model(exported), tile=tile, seed=3)
    lr = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours, theirs = onnx_up.upscale_tensor(lr), torch_up.upscale_tensor(lr)
    assert ours.shape == theirs.shape == (1, 3, 180, 280)
    assert float((ours - theirs).abs().max()) / 2 < 1e-3
    assert np.abs(onnx_up.upscale(photo).astype(int) - torch_up.upscale(photo)).max() <= 1
    other = Upscaler(open_model(exported), tile=tile, seed=4).upscale_tensor(lr)
    assert float((other - theirs).abs().max()) > 1e-2  # the noise is an input that matters


@pytest.mark.slow
def test_the_embedded_student_exports_and_matches(tmp_path: Path) -> None:
    """The shipped student (fp16 weights, run in fp32), exported and run by onnxruntime: within 1e-3 of PyTorch."""
    path = tmp_path / "embedded.onnx"
    metadata = export_onnx(load_model(Path(__file__).parents[1] / "src/tadsr/weights/student.safetensors"), path)
    assert metadata["noise"] == "input" and metadata["scale"] == "4" and json.loads(metadata["model_config"])
    photo = _photo(64, 64)
    ours = Upscaler(open_model(path), tile=0).upscale(photo)
    theirs = Upscaler(open_model("student", device="cpu"), tile=0).upscale(photo)
    assert np.abs(ours.astype(int) - theirs).max() <= 1


@pytest.mark.slow
def test_an_fp16_file_is_half_the_size_and_close_to_fp32(exported: Path, vq_student_file: Path,
                                                         tmp_path: Path) -> None:
    """--fp16: float16 weights and compute, float32 in and out; within 3e-3 (of [0, 1]) of PyTorch fp32, tiled."""
    path = tmp_path / "half.onnx"
    code, stdout, stderr = _run("export", str(vq_student_file), "-o", str(path), "--fp16")
    assert code == 0, stderr
    assert f"wrote {path}: x4 one-step graph, dynamic size, fp16, opset 18" in stdout
    assert read_metadata(path)["precision"] == "fp16"
    assert path.stat().st_size < 0.75 * exported.stat().st_size  # the weights halve; graph and metadata stay
    lr = torch.from_numpy(_photo(45, 70)).permute(2, 0, 1)[None].float() / 127.5 - 1
    half = Upscaler(open_model(path), tile=32, seed=3).upscale_tensor(lr)
    full = Upscaler(open_model(vq_student_file, device="cpu"), tile=32, seed=3).upscale_tensor(lr)
    assert half.dtype == torch.float32
    difference = float((half - full).abs().max()) / 2
    assert 0 < difference < 3e-3  # float16 rounding, not another picture


@pytest.mark.slow
def test_tadsr_bench_times_an_onnx_file_against_real_esrgan(exported: Path, tmp_path: Path) -> None:
    code, stdout, stderr = _run("bench", "--models", str(exported), "--sizes", "16,40", "--tile", "32", "--repeats",
                                "1", "--json", str(tmp_path / "b.json"))
    assert code == 0, stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    ours = [r for r in rows if r["model"] == "student.onnx"]
    assert [(r["lr"], r["out"], r["dtype"], r["tiles"]) for r in ours] == [(16, 64, "fp32 (ORT)", 0),
                                                                           (40, 160, "fp32 (ORT)", 32)]
    yardstick = next(r for r in rows if r["model"] == "realesrgan-x4plus" and r["lr"] == 16)
    assert ours[0]["x_realesrgan"] == pytest.approx(yardstick["seconds"] / ours[0]["student_1_s"])
    assert all(r["student_1_s"] > 0 and r["student_peak_mib"] > 0 for r in ours)
    assert "| student.onnx | 16→64 | fp32 (ORT) |" in stdout
    missing = _run("bench", "--models", str(tmp_path / "none.onnx"), "--sizes", "16", "--repeats", "1")
    assert missing[0] == 1 and "none.onnx: no such model file" in missing[2].strip().splitlines()[-1]


@pytest.mark.slow
def test_a_fixed_size_file_embeds_its_noise(fixed_onnx_export: CliExport, tiny_student_file: Path) -> None:
    """--tile N: one N x N input, the seed's noise inside, the same result as PyTorch for an N x N image (conftest:
    `tadsr export TINY --tile 32 --seed 3`, one export for the session)."""
    path, code, stdout, stderr = (fixed_onnx_export.path, fixed_onnx_export.code, fixed_onnx_export.stdout,
                                  fixed_onnx_export.stderr)
    assert code == 0, stderr
    assert "fixed 32x32 input" in stdout
    assert read_metadata(path)["tile"] == "32"
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["lr"] and session.get_inputs()[0].shape == [1, 3, 32, 32]
    photo = _photo(32, 32)
    ours = Upscaler(open_model(path)).upscale(photo)
    theirs = Upscaler(open_model(tiny_student_file, device="cpu"), tile=0, seed=3).upscale(photo)
    assert np.abs(ours.astype(int) - theirs).max() <= 1


@pytest.mark.slow
def test_tadsr_upscale_runs_an_onnx_file_with_its_guarantees(exported: Path, vq_student_file: Path,
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_photo(40, 52)).save(folder / "a.png")
    (folder / "bad.png").write_bytes(b"not an image")
    code, stdout, stderr = _run("upscale", "-i", str(folder), "-o", str(tmp_path / "out"), "--model", str(exported),
                                "--tile", "32", "-q")
    assert code == 1 and "1 done, 0 skipped, 1 failed" in stdout
    assert [line for line in stderr.splitlines() if "bad.png" in line][0].startswith("tadsr: error:")
    code, _, _ = _run("upscale", "-i", str(folder / "a.png"), "-o", str(tmp_path / "ref"), "--model",
                      str(vq_student_file), "--tile", "32", "-q")
    assert code == 0
    ours, theirs = (np.asarray(Image.open(tmp_path / d / "a.png")).astype(int) for d in ("out", "ref"))
    assert ours.shape == (160, 208, 3) and np.abs(ours - theirs).max() <= 1


def test_a_teacher_is_refused_unless_asked(teacher_file: Path, tmp_path: Path) -> None:
    code, _, stderr = _run("export", str(teacher_file), "-o", str(tmp_path / "t.onnx"))
    assert code == 1 and stderr.count("\n") == 1 and "a teacher samples 4 steps" in stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content", [b"", b"\x08\x01garbage that is not a protobuf", "foreign"])
def test_a_corrupt_or_foreign_onnx_file_is_one_line(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "model.onnx"
    if content == "foreign":  # a valid ONNX graph not made by tadsr
        import onnx
        from onnx import TensorProto, helper

        node = helper.make_node("Identity", ["x"], ["y"])
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        open_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    code, _, stderr = _run("upscale", "-i", str(path), "-o", str(tmp_path / "out"), "--model", str(path))
    assert code == 1 and len(stderr.strip().splitlines()) == 1


def test_an_export_that_fails_leaves_no_file(tiny_student_file: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("the exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)
    code, _, stderr = _run("export", str(tiny_student_file), "-o", str(tmp_path / "x.onnx"))
    assert code == 1 and "the ONNX exporter failed: RuntimeError: the exporter broke" in stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_tadsr_evaluate_measures_an_onnx_file_by_its_stem(exported: Path, tmp_path: Path) -> None:
    """`--models FILE.onnx:1`: the report's row and the outputs' folder are named by the file's stem, inside -o."""
    for sub in ("lr", "gt"):
        (tmp_path / sub).mkdir()
    gt = _photo(64, 64)
    Image.fromarray(gt).save(tmp_path / "gt" / "p.png")
    Image.fromarray(gt).resize((16, 16), Image.BICUBIC).save(tmp_path / "lr" / "p.png")
    code, _, stderr = _run("evaluate", "--lr", str(tmp_path / "lr"), "--gt", str(tmp_path / "gt"), "--models",
                           f"bicubic,{exported}:1", "-o", str(tmp_path / "report"), "-q")
    assert code == 0, stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report) == {"bicubic", "student:1"}
    assert (tmp_path / "report" / "outputs" / "student_1" / "p.png").is_file()
    assert sorted(p.name for p in exported.parent.iterdir()) == ["student.onnx"]  # nothing written beside the model


@pytest.mark.slow
def test_the_page_lists_and_runs_an_onnx_file(exported: Path, vq_student_file: Path, tmp_path: Path) -> None:
    """`tadsr serve --models-dir`: an exported file is listed (one step) and runs through the page's job with the
    pictures of the PyTorch model; a foreign .onnx in the folder is skipped with one line."""
    import shutil

    from tadsr.web.jobs import JobSettings, ModelCache, model_catalogue, upscale_file

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(exported, folder / "student.onnx")
    (folder / "broken.onnx").write_bytes(b"not onnx")
    said: list[str] = []
    catalogue = model_catalogue(models_dir=folder, report=said.append)
    assert catalogue["student.onnx"].step_choices == [1] and catalogue["student.onnx"].scale == 4
    assert "broken.onnx" not in catalogue and len(said) == 1 and "broken.onnx" in said[0]
    Image.fromarray(_photo(40, 52)).save(tmp_path / "p.png")
    models = ModelCache(catalogue, torch.device("cpu"))
    result = upscale_file(tmp_path / "p.png", "p.png", JobSettings(model="student.onnx", tile=32, seed=2), models,
                          tmp_path / "job")
    ours = np.asarray(Image.open(result.output)).astype(int)
    theirs = Upscaler(open_model(vq_student_file, device="cpu"), tile=32, seed=2).upscale(_photo(40, 52))
    assert ours.shape == (160, 208, 3) and np.abs(ours - theirs).max() <= 1 and "1 step" in result.summary
