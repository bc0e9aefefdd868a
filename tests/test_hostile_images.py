"""Hostile image files and sizes: the guard reads only what an allowed image needs, decodes only formats whose
header it checked, bounds outputs before allocating them, and the rest of the batch goes on (issue class 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tadsr.cli import main
from tadsr.data.image_io import ImageError, max_file_bytes, read_image

TADSR = str(Path(sys.executable).parent / "tadsr")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TADSR, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _photo(path: Path, size: tuple[int, int] = (24, 20)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _hdr_bomb(path: Path) -> Path:
    """A Radiance HDR header claiming 9000x9000 (OpenCV would decode it: 2 GB), named .png: Pillow cannot parse it."""
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 9000 +X 9000\n" + bytes(64))
    return path


def _sparse(path: Path, size: int = 3 << 30) -> Path:
    """A 3 GiB file that takes no disk: read whole, it would take 3 GiB of memory."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_a_format_pillow_cannot_parse_is_refused_before_any_decoding(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"bomb\.png: not a readable image .*; nothing was decoded"):
        read_image(_hdr_bomb(tmp_path / "bomb.png"))
    with pytest.raises(ImageError, match="nothing was decoded"):  # even with the pixel limit off
        read_image(tmp_path / "bomb.png", max_pixels=0)


def test_the_file_size_is_bounded_before_the_file_is_read(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "huge.png")
    assert path.stat().st_size > max_file_bytes(50_000_000)
    with pytest.raises(ImageError, match=r"huge\.png: 3,221,225,472 bytes is more than any image within the limit"):
        read_image(path)


@pytest.mark.slow
def test_upscale_refuses_each_bad_file_in_one_line_and_does_the_rest(tmp_path: Path,
                                                                    tiny_student_file: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "good.png")
    _hdr_bomb(src / "bomb.png")
    _sparse(src / "huge.png")
    out = tmp_path / "out"
    result = _run("upscale", "-i", str(src), "-o", str(out), "--model", str(tiny_student_file), "-q")
    errors = [line for line in result.stderr.splitlines() if line.startswith("tadsr: error:")]
    assert result.returncode == 1
    assert len(errors) == 2 and any("bomb.png: not a readable image" in e for e in errors)
    assert any("huge.png: 3,221,225,472 bytes" in e for e in errors)
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]  # nothing half-written, the good one done


@pytest.mark.slow
def test_an_output_beyond_the_limit_fails_per_file_before_allocating(tmp_path: Path, tiny_student_file: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "a.png")
    _photo(src / "b.png")
    out = tmp_path / "out"
    # 24x20 = 480 pixels in, within --max-pixels 500; x8 out = 30,720 pixels, over 16 x 500
    result = _run("upscale", "-i", str(src), "-o", str(out), "--model", str(tiny_student_file), "-q", "-s", "8",
                  "--max-pixels", "500")
    errors = [line for line in result.stderr.splitlines() if line.startswith("tadsr: error:")]
    assert result.returncode == 1 and len(errors) == 2
    for name, line in zip(("a.png", "b.png"), errors, strict=True):
        assert f"{name}: the output would be 192x160 = 30,720 pixels, more than 16 x --max-pixels (8,000)" in line
    assert not list(out.iterdir())
    absurd = _run("upscale", "-i", str(src), "-o", str(out), "--model", str(tiny_student_file), "-s", "1000")
    assert absurd.returncode == 2 and "-s" in absurd.stderr  # a usage error, before anything is read
    # a small -s is fine: the same files go through (in this process: only the refusals above need a real one)
    ok = CliRunner().invoke(main, ["upscale", "-i", str(src), "-o", str(out), "--model", str(tiny_student_file), "-q",
                                   "-s", "2"])
    assert ok.exit_code == 0, ok.stderr
    assert Image.open(out / "a.png").size == (48, 40)


def test_degrade_refuses_a_gt_size_beyond_the_pixel_limit_up_front(tmp_path: Path) -> None:
    src = tmp_path / "hr"
    src.mkdir()
    _photo(src / "a.png", (64, 64))
    result = _run("degrade", "-i", str(src), "-o", str(tmp_path / "set"), "--gt-size", "20000", "-q")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1
    assert "--gt-size 20000: 20000x20000 pixels exceeds the limit of 50,000,000" in lines[0]
    assert not (tmp_path / "set").exists()


def test_reading_leaves_pillow_and_opencv_settings_as_the_program_set_them(tmp_path: Path) -> None:
    import cv2

    before = Image.MAX_IMAGE_PIXELS
    level = cv2.utils.logging.getLogLevel()
    read_image(_photo(tmp_path / "p.png"))
    with pytest.raises(ImageError):
        read_image(_hdr_bomb(tmp_path / "bomb.png"))
    assert Image.MAX_IMAGE_PIXELS == before and before is not None  # Pillow's own default guard still stands
    assert cv2.utils.logging.getLogLevel() == level


def test_with_the_limit_off_an_image_beyond_opencvs_own_limit_is_one_line(tmp_path: Path) -> None:
    """--max-pixels 0: a well-formed PNG header claiming 40000x40000 reaches OpenCV, whose refusal is our message."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match=r"huge\.png: 40000x40000 = 1,600,000,000 pixels exceeds the limit"):
        read_image(path)
    with pytest.raises(ImageError, match=r"huge\.png: OpenCV cannot decode it"):
        read_image(path, max_pixels=0)


def test_a_format_pillow_knows_but_tadsr_does_not_read_is_named(tmp_path: Path) -> None:
    path = tmp_path / "anim.png"
    Image.new("RGB", (8, 8)).save(path, format="GIF")  # named .png, a GIF inside
    with pytest.raises(ImageError, match=r"anim\.png: a GIF image; tadsr reads PNG, JPEG, WebP, TIFF and BMP"):
        read_image(path)
