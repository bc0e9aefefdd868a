"""Names and paths (issue class 6): long names, links that lead nowhere, an output that is a folder, output into
the input folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

from tadsr.cli import main


def _upscale(src: Path, out: Path, model: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["upscale", "-i", str(src), "-o", str(out), "--model", str(model), "-q", *extra])


def _photo(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def _errors(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("tadsr: error:")]


def test_a_long_legal_name_is_written_and_a_too_long_one_is_one_line(tmp_path: Path,
                                                                    tiny_student_file: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    long_name = "a" * 240 + ".png"  # legal; its temporary name must stay legal too
    _photo(src / long_name)
    out = tmp_path / "out"
    result = _upscale(src, out, tiny_student_file, "--suffix", "_x4")
    assert result.exit_code == 0, result.stderr
    assert (out / ("a" * 240 + "_x4.png")).is_file() and not list(out.glob(".*.tmp"))
    result = _upscale(src, tmp_path / "out2", tiny_student_file, "--suffix", "_" + "b" * 20)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert len(_errors(result)) == 1 and "is longer than 255 bytes" in _errors(result)[0]


def test_links_that_lead_nowhere_are_named_and_skipped(tmp_path: Path, tiny_student_file: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "good.png")
    os.symlink(src / "missing.png", src / "dangling.png")
    os.symlink(src / "loop.png", src / "loop.png")
    result = _upscale(src, tmp_path / "out", tiny_student_file)
    warned = [line for line in result.stderr.splitlines() if "symbolic link" in line]
    assert result.exit_code == 0, result.stderr
    assert sorted(Path(w.split(": ")[2]).name for w in warned) == ["dangling.png", "loop.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_an_output_that_is_an_existing_folder_is_an_error(tmp_path: Path, tiny_student_file: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "a.png")
    _photo(src / "b.png")
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    result = _upscale(src, tmp_path / "out", tiny_student_file)
    assert result.exit_code == 1 and len(_errors(result)) == 1
    assert "a.png is an existing folder" in _errors(result)[0]
    assert (tmp_path / "out" / "b.png").is_file()


def test_output_into_the_input_folder_never_snowballs_nor_replaces_an_input(tmp_path: Path,
                                                                           tiny_student_file: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "x.png")
    for _ in range(2):  # a rerun finds x_x4.png: an output of ours, not a new input
        result = _upscale(src, src, tiny_student_file, "--suffix", "_x4", "--overwrite")
        assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in src.iterdir()) == ["x.png", "x_x4.png"]
    result = _upscale(src, src, tiny_student_file, "--overwrite")
    assert result.exit_code == 1 and "its output would replace it" in result.stderr
    assert Image.open(src / "x.png").size == (24, 20)  # the input is intact
