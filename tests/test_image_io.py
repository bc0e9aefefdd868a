"""Image I/O: bit depth, channel layouts, EXIF orientation, ICC/EXIF copying, bad files, atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from tadsr.data.image_io import ImageData, ImageError, apply_orientation, read_image, write_image

RNG = np.random.default_rng(0)
ICC = b"\x00\x00\x02\x0cfake-icc-profile-for-tests" * 4


def _rgb8(h: int = 20, w: int = 30) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "tadsr-test"  # Make
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16bit_round_trip_is_exact(tmp_path: Path, fmt: str) -> None:
    pixels = RNG.integers(0, 65536, (17, 23, 3), dtype=np.uint16)
    write_image(tmp_path / f"a.{fmt}", ImageData(pixels))
    back = read_image(tmp_path / f"a.{fmt}")
    assert back.pixels.dtype == np.uint16 and np.array_equal(back.pixels, pixels)
    # and the file is really RGB (OpenCV stores BGR): red stays red
    raw = cv2.imread(str(tmp_path / f"a.{fmt}"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(raw[..., 2], pixels[..., 0])


@pytest.mark.parametrize(("mode", "shape"), [("L", (20, 30)), ("LA", (20, 30, 2)), ("RGB", (20, 30, 3)),
                                             ("RGBA", (20, 30, 4))])
def test_channel_layouts_are_kept(tmp_path: Path, mode: str, shape: tuple[int, ...]) -> None:
    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    image = read_image(tmp_path / "in.png")
    assert image.pixels.shape == shape and np.array_equal(image.pixels, pixels)
    write_image(tmp_path / "out.png", image)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == mode and np.array_equal(np.asarray(out), pixels)


def test_16bit_gray_is_read_as_gray(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 65536, (12, 9), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), pixels)
    image = read_image(tmp_path / "g.png")
    assert image.pixels.shape == (12, 9) and np.array_equal(image.pixels, pixels)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(tmp_path: Path, orientation: int) -> None:
    pixels = _rgb8(12, 18)
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=_exif(orientation))
    image = read_image(tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(image.pixels, expected)
    exif = Image.open(io.BytesIO(_png_with(image))).getexif()
    assert exif.get(0x0112) == 1 and exif.get(0x010F) == "tadsr-test"


def _png_with(image: ImageData) -> bytes:
    from tadsr.data.image_io import encode_image

    return encode_image(image, "png")


def test_apply_orientation_handles_alpha_and_gray() -> None:
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert apply_orientation(gray, 6).shape == (3, 2)
    rgba = np.zeros((2, 3, 4), np.uint8)
    assert apply_orientation(rgba, 8).shape == (3, 2, 4)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_icc_and_exif_are_copied(tmp_path: Path, fmt: str) -> None:
    Image.fromarray(_rgb8()).save(tmp_path / "in.png", icc_profile=ICC, exif=_exif())
    image = read_image(tmp_path / "in.png")
    assert image.icc_profile == ICC
    write_image(tmp_path / f"out.{fmt}", image)
    with Image.open(tmp_path / f"out.{fmt}") as out:
        assert out.info.get("icc_profile") == ICC
        assert out.getexif().get(0x010F) == "tadsr-test"


def test_icc_and_exif_survive_in_16bit_png(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 65536, (10, 11, 3), dtype=np.uint16)
    write_image(tmp_path / "a.png", ImageData(pixels, icc_profile=ICC, exif=_exif().tobytes()))
    with Image.open(tmp_path / "a.png") as im:
        assert im.info.get("icc_profile") == ICC and im.getexif().get(0x010F) == "tadsr-test"
    assert np.array_equal(read_image(tmp_path / "a.png").pixels, pixels)  # chunks valid, pixels intact


def test_16bit_to_jpeg_becomes_8bit_and_alpha_is_dropped(tmp_path: Path) -> None:
    pixels = np.full((8, 8, 4), 65535, np.uint16)
    write_image(tmp_path / "a.jpg", ImageData(pixels))
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.mode == "RGB" and np.asarray(im).min() >= 250


def _corrupt_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = io.BytesIO()
    Image.fromarray(_rgb8(64, 64)).save(good, format="PNG")
    jpeg = io.BytesIO()
    Image.fromarray(_rgb8(64, 64)).save(jpeg, format="JPEG")
    files = {
        "empty": (b"", "empty file"),
        "garbage": (b"this is not an image at all", "not a readable image"),
        "truncated-png": (good.getvalue()[: len(good.getvalue()) // 2], "truncated"),
        "truncated-jpg": (jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated"),
    }
    out = {}
    for name, (data, needle) in files.items():
        path = tmp_path / f"{name}.{'jpg' if 'jpg' in name else 'png'}"
        path.write_bytes(data)
        out[name] = (path, needle)
    tiny = tmp_path / "one-pixel.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    out["1x1"] = (tiny, "too small")
    return out


def test_bad_files_fail_with_one_line_naming_the_file(tmp_path: Path) -> None:
    for name, (path, needle) in _corrupt_cases(tmp_path).items():
        with pytest.raises(ImageError) as info:
            read_image(path)
        message = str(info.value)
        assert message.startswith(str(path)) and needle in message and "\n" not in message, name
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_pixel_limit_is_checked(tmp_path: Path) -> None:
    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="120,000 pixels exceeds the limit of 100,000"):
        read_image(tmp_path / "big.png", max_pixels=100_000)
    assert read_image(tmp_path / "big.png", max_pixels=0).pixels.shape == (300, 400, 3)


def test_a_crash_while_writing_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tadsr.data.image_io as io_module

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_module.os, "replace", crash)
    with pytest.raises(ImageError, match="out.png: cannot write"):
        write_image(tmp_path / "out.png", ImageData(_rgb8()))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_target_is_an_image_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImageError, match="cannot write"):
        write_image(tmp_path / "file" / "out.png", ImageData(_rgb8()))
