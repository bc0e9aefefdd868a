"""Upscaler API and `tadsr upscale`: sizes, formats, seeds, colour fix, batch folders with bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tadsr.backends import open_model
from tadsr.checkpoints import FORMAT_NAME, FORMAT_VERSION, atomic_save_file
from tadsr.cli import main
from tadsr.inference.color import adain_color_fix, wavelet_color_fix, wavelet_decompose
from tadsr.inference.upscaler import Upscaler

RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def upscaler(tiny_student_file: Path) -> Upscaler:
    return Upscaler(open_model(tiny_student_file, device="cpu"), tile=32, tile_overlap=8)


@pytest.mark.parametrize("shape", [(37, 53, 3), (53, 37, 3), (37, 53), (37, 53, 4), (37, 53, 2)])
def test_output_is_input_times_scale_with_the_same_layout(upscaler: Upscaler, shape: tuple[int, ...]) -> None:
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    out = upscaler.upscale(image)
    assert out.dtype == np.uint8 and out.shape == (shape[0] * 4, shape[1] * 4, *shape[2:])


def test_upscaler_is_exported_at_the_top_level() -> None:
    import tadsr

    assert tadsr.Upscaler is Upscaler


def test_16bit_in_16bit_out(upscaler: Upscaler) -> None:
    out = upscaler.upscale(RNG.integers(0, 65536, (21, 30, 3), dtype=np.uint16))
    assert out.dtype == np.uint16 and out.shape == (84, 120, 3)
    assert len(np.unique(out)) > 256  # real 16-bit values, not 8-bit ones scaled up


def test_alpha_is_upscaled_with_bicubic_and_reattached(upscaler: Upscaler) -> None:
    image = RNG.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    image[..., 3] = 200
    image[:10, :, 3] = 0
    out = upscaler.upscale(image)
    assert (out[:30, :, 3] == 0).all() and (out[50:, :, 3] == 200).all()


def test_pil_images_come_back_as_pil(upscaler: Upscaler) -> None:
    for mode in ("RGB", "L", "RGBA", "P"):
        image = Image.fromarray(RNG.integers(0, 256, (16, 20, 3), dtype=np.uint8)).convert(mode)
        out = upscaler.upscale(image)
        assert isinstance(out, Image.Image) and out.size == (80, 64)
        assert out.mode == ("RGB" if mode == "P" else mode)


def test_outscale_resizes_after_the_native_scale(tiny_student_file: Path) -> None:
    up = Upscaler(open_model(tiny_student_file, device="cpu"), outscale=2.5)
    assert up.upscale(RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)).shape == (92, 132, 3)


def test_seeds_reproduce_bit_exactly(tiny_student_file: Path) -> None:
    image = RNG.integers(0, 256, (40, 44, 3), dtype=np.uint8)
    a = Upscaler(open_model(tiny_student_file, device="cpu"), seed=7).upscale(image)
    b = Upscaler(open_model(tiny_student_file, device="cpu"), seed=7).upscale(image)
    c = Upscaler(open_model(tiny_student_file, device="cpu"), seed=8).upscale(image)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_batch_gives_the_same_images_as_one_by_one(upscaler: Upscaler) -> None:
    images = [RNG.integers(0, 256, (30, 34, 3), dtype=np.uint8) for _ in range(2)]
    batch = upscaler.upscale_batch(images)
    assert all(np.array_equal(b, upscaler.upscale(i)) for b, i in zip(batch, images, strict=True))


def test_bad_options_are_rejected(tiny_student_file: Path) -> None:
    with pytest.raises(ValueError, match="one step"):
        Upscaler(open_model(tiny_student_file, device="cpu", steps=5))
    with pytest.raises(ValueError, match="half the tile"):
        Upscaler(open_model(tiny_student_file, device="cpu"), tile=32, tile_overlap=20)
    with pytest.raises(TypeError):
        Upscaler(open_model(tiny_student_file, device="cpu")).upscale(np.zeros((8, 8, 3), np.float64))


class RunsSmallTiles:
    """A ``Backend`` whose network runs out of CUDA memory on tiles above 32 LR pixels (``tried``: each tile's side)."""

    scale, size_multiple, noise_factor, device = 4, 8, 1, torch.device("cpu")

    def __init__(self) -> None:
        self.tried: list[int] = []

    def draw_noise(self, height: int, width: int, seed: int) -> torch.Tensor:
        return torch.randn((1, 1, 3, height, width), generator=torch.Generator().manual_seed(seed))

    def run(self, lr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.tried.append(max(lr.shape[-2:]))
        if max(lr.shape[-2:]) > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.nn.functional.interpolate(lr, scale_factor=4, mode="nearest")


def test_cuda_out_of_memory_halves_the_tile_and_retries() -> None:
    backend = RunsSmallTiles()
    up = Upscaler(backend, tile=128, tile_overlap=8)
    with pytest.warns(RuntimeWarning) as record:
        out = up.upscale(RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    assert [str(w.message) for w in record] == ["CUDA out of memory: retrying with tile 64",
                                                "CUDA out of memory: retrying with tile 32"]
    assert backend.tried[:2] == [40, 40] and set(backend.tried[2:]) == {32} and out.shape == (160, 160, 3)


def test_color_fixes_restore_the_reference_colours() -> None:
    gen = torch.Generator().manual_seed(0)
    style = torch.rand(1, 3, 64, 64, generator=gen)
    content = style * 0.5 + 0.3 + 0.05 * torch.randn(1, 3, 64, 64, generator=gen)  # colour-shifted, with detail
    fixed = adain_color_fix(content, style)
    torch.testing.assert_close(fixed.mean((2, 3)), style.mean((2, 3)))
    torch.testing.assert_close(fixed.std((2, 3)), style.std((2, 3)), atol=1e-4, rtol=1e-4)
    fixed = wavelet_color_fix(content, style)
    (high_f, low_f), (high_c, low_c), (_, low_s) = (wavelet_decompose(x) for x in (fixed, content, style))
    assert (low_f - low_s).norm() < 0.2 * (low_c - low_s).norm()  # colours moved to the reference's
    assert (high_f - high_c).norm() < 0.2 * high_c.norm()  # detail kept
    torch.testing.assert_close(high_c + low_c, content)


def test_upscaler_applies_the_colour_fix(tiny_student_file: Path) -> None:
    image = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    plain = Upscaler(open_model(tiny_student_file, device="cpu")).upscale(image).astype(float)
    fixed = Upscaler(open_model(tiny_student_file, device="cpu"), color_fix="adain").upscale(image).astype(float)
    target = image.astype(float).mean((0, 1))
    assert np.abs(fixed.mean((0, 1)) - target).max() < np.abs(plain.mean((0, 1)) - target).max()
    assert np.abs(fixed.mean((0, 1)) - target).max() < 3


# --- the command ---------------------------------------------------------------------------------------------


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Good images of every kind, bad files, and a non-image that must be ignored."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(src / "rgb.png")
    Image.fromarray(RNG.integers(0, 256, (30, 20), dtype=np.uint8)).save(src / "gray.jpg")
    Image.fromarray(RNG.integers(0, 256, (24, 24, 4), dtype=np.uint8)).save(src / "rgba.png")
    import cv2

    cv2.imwrite(str(src / "sub" / "deep16.png"), RNG.integers(0, 65536, (20, 22, 3), dtype=np.uint16))
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (src / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1)).save(src / "dot.png")
    (src / "notes.txt").write_text("not an image, not even tried")
    return src


def test_folder_with_good_and_bad_files(photo_folder: Path, tiny_student_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = _run("upscale", "-i", str(photo_folder), "-o", str(out), "--model", str(tiny_student_file),
                                "-q")
    assert code == 1
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["gray.jpg", "rgb.png", "rgba.png", "sub/deep16.png"]
    errors = [line for line in stderr.splitlines() if line.startswith("tadsr: error:")]  # (and padding notices)
    assert len(errors) == 3
    for name, needle in (("corrupt.png", "not a readable image"), ("empty.jpg", "empty file"),
                         ("dot.png", "too small")):
        assert any(str(photo_folder / name) in line and needle in line for line in errors), name
    assert "4 done, 0 skipped, 3 failed" in stdout
    with Image.open(out / "gray.jpg") as im:
        assert im.mode == "L" and im.size == (80, 120)
    deep = __import__("cv2").imread(str(out / "sub" / "deep16.png"), -1)
    assert deep.dtype == np.uint16 and deep.shape == (80, 88, 3)
    with Image.open(out / "rgba.png") as im:
        assert im.mode == "RGBA" and im.size == (96, 96)
    # a second run skips what exists, still reports the bad files
    code, stdout, _ = _run("upscale", "-i", str(photo_folder), "-o", str(out), "--model", str(tiny_student_file),
                           "-q")
    assert code == 1 and "0 done, 4 skipped, 3 failed" in stdout


def test_single_file_with_options(photo_folder: Path, tiny_student_file: Path, tmp_path: Path) -> None:
    code, stdout, stderr = _run("upscale", "-i", str(photo_folder / "rgb.png"), "-o", str(tmp_path / "o"), "--model",
                                str(tiny_student_file), "-s", "2", "--ext", "webp", "--suffix", "_x2", "--tile", "0",
                                "--color-fix", "wavelet", "--fp32", "-q")
    assert code == 0, stderr
    with Image.open(tmp_path / "o" / "rgb_x2.webp") as im:
        assert im.size == (106, 74)
    assert "1 done, 0 skipped, 0 failed" in stdout and "per output megapixel" in stdout


def test_glob_input_and_dry_run_write_nothing(photo_folder: Path, tiny_student_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    code, stdout, _ = _run("upscale", "-i", str(photo_folder / "*.png"), "-o", str(out), "--model",
                           str(tiny_student_file), "--dry-run")
    assert code == 0 and not out.exists()
    lines = [line for line in stdout.splitlines() if " -> " in line]
    assert len(lines) == 4 and all(line.endswith(".png") for line in lines)  # corrupt, dot, rgb, rgba; not sub/


def test_no_partial_file_after_a_crash_in_writing(photo_folder: Path, tiny_student_file: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import tadsr.data.image_io as io_module

    def crash(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(io_module.os, "replace", crash)
    out = tmp_path / "out"
    code, _, stderr = _run("upscale", "-i", str(photo_folder / "rgb.png"), "-o", str(out), "--model",
                           str(tiny_student_file), "-q")
    assert code == 1 and "cannot write (Input/output error)" in stderr
    assert [p for p in out.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("case", ["missing-model", "bad-device", "pth-model", "wrong-architecture",
                                  "unwritable-output", "missing-input"])
def test_fatal_errors_are_one_line(case: str, photo_folder: Path, tiny_student_file: Path, tmp_path: Path) -> None:
    args = ["upscale", "-i", str(photo_folder), "-o", str(tmp_path / "out"), "-q"]
    needle = {"missing-model": "nope.safetensors: no such model file", "bad-device": "not a device",
              "pth-model": "not a tadsr model file",
              "wrong-architecture": "does not fit SRModel",
              "unwritable-output": "not writable",
              "missing-input": "no such file or folder"}[case]
    if case == "missing-model":
        args += ["--model", str(tmp_path / "nope.safetensors")]
    elif case == "bad-device":
        args += ["--model", str(tiny_student_file), "--device", "tpu9"]
    elif case == "pth-model":
        torch.save({"w": torch.zeros(1)}, tmp_path / "m.pth")
        args += ["--model", str(tmp_path / "m.pth")]
    elif case == "wrong-architecture":
        from safetensors import safe_open

        with safe_open(str(tiny_student_file), framework="pt") as f:
            meta = f.metadata()
        atomic_save_file({"unet.other.weight": torch.zeros(3)}, tmp_path / "bad.safetensors",
                         {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": meta["config"]})
        args += ["--model", str(tmp_path / "bad.safetensors")]
    elif case == "unwritable-output":
        (tmp_path / "file").write_text("x")
        args[4] = str(tmp_path / "file" / "out")
        args += ["--model", str(tiny_student_file)]
    elif case == "missing-input":
        args[2] = str(tmp_path / "nothing-here")
        args += ["--model", str(tiny_student_file)]
    code, _, stderr = _run(*args)
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and needle in lines[0], stderr


def test_a_small_input_and_a_tile_the_model_cannot_run_are_said_once_each(tmp_path: Path,
                                                                          tiny_student_file: Path) -> None:
    """The tiny test model runs multiples of 32 LR pixels (a face model: 512): a 24x20 input is padded to 32x32,
    more than twice its pixels, and --tile 40 runs as 64; each is one warning, not silence."""
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (24, 20)).save(src / "small.png")
    Image.new("RGB", (60, 60)).save(src / "big.png")  # padded to 64x64: not worth a word
    code, _, stderr = _run("upscale", "-i", str(src), "-o", str(tmp_path / "out"), "--model",
                           str(tiny_student_file), "-q", "--tile", "40")
    warned = [line for line in stderr.splitlines() if line.startswith("tadsr: warning:")]
    assert code == 0 and len(warned) == 2
    assert "--tile 40 runs as 64, this model's multiple" in warned[0]
    assert "small.png: 24x20 is padded to 32x32" in warned[1]


def test_the_sampler_option_reaches_the_teacher(photo_folder: Path, teacher_file: Path, tiny_student_file: Path,
                                                tmp_path: Path) -> None:
    """--sampler stochastic (Eq. 2) changes a teacher's T-step result and reproduces bit-exactly with the same seed;
    one step (a student) is the same under both samplers; an unknown sampler is a usage error."""
    def run(model: Path, sampler: str, out: str) -> np.ndarray:
        code, _, stderr = _run("upscale", "-i", str(photo_folder / "rgb.png"), "-o", str(tmp_path / out), "--model",
                               str(model), "--sampler", sampler, "--tile", "0", "-q")
        assert code == 0, stderr
        return np.asarray(Image.open(tmp_path / out / "rgb.png"))

    det, sto, again = (run(teacher_file, s, o) for s, o in (("deterministic", "d"), ("stochastic", "s"),
                                                             ("stochastic", "s2")))
    assert det.shape == sto.shape and np.abs(det.astype(int) - sto).mean() > 0.5
    assert np.array_equal(sto, again)
    assert np.array_equal(run(tiny_student_file, "deterministic", "sd"), run(tiny_student_file, "stochastic", "ss"))
    code, _, stderr = _run("upscale", "-i", str(photo_folder), "-o", str(tmp_path / "x"), "--sampler", "ddim")
    assert code == 2 and "--sampler" in stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize(("cpuinfo", "native"), [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
])
def test_native_bf16_is_read_from_the_cpus_flags(cpuinfo: str, native: bool) -> None:
    from tadsr.devices import cpu_bf16_native

    assert cpu_bf16_native(cpuinfo) is native


def test_bf16_on_a_cpu_without_it_warns(tiny_student_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tadsr.inference.backend as backend_module

    monkeypatch.setattr(backend_module, "cpu_bf16_native", lambda: False)
    with pytest.warns(RuntimeWarning, match="bf16 on this CPU is emulated"):
        Upscaler(open_model(tiny_student_file, device="cpu", dtype=torch.bfloat16))
    monkeypatch.setattr(backend_module, "cpu_bf16_native", lambda: True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Upscaler(open_model(tiny_student_file, device="cpu", dtype=torch.bfloat16))
