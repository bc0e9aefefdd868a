"""`tadsr serve`'s handler functions, without a server: model list, one job, limits, cancel, previews, clean-up."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tadsr.cli import main
from tadsr.data.image_io import ImageError, read_image
from tadsr.errors import ConfigError, MissingExtraError, NotFoundError
from tadsr.model import SRModel, save_model
from tadsr.web.jobs import (
    PREVIEW_SIDE,
    Cancelled,
    JobSettings,
    ModelCache,
    model_catalogue,
    output_name,
    preview_size,
    sweep,
    upscale_file,
)
from tadsr.web.page import Sessions, _number, import_gradio

RNG = np.random.default_rng(7)
STUDENT, TEACHER = "tiny-student.safetensors", "teacher.safetensors"


@pytest.fixture(scope="module")
def models(tiny_student_file: Path, teacher_file: Path) -> ModelCache:
    return ModelCache(model_catalogue([tiny_student_file, teacher_file]), torch.device("cpu"))


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "upload" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(RNG.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def test_the_list_has_the_embedded_models_and_the_given_files(tiny_student_file: Path, teacher_file: Path) -> None:
    catalogue = model_catalogue([tiny_student_file, teacher_file, tiny_student_file])
    assert list(catalogue) == ["student (embedded)", "teacher (embedded)", STUDENT, TEACHER]  # a file once
    assert catalogue[STUDENT].step_choices == [1]
    assert catalogue[TEACHER].step_choices == [4, 1]  # the schedule's T first: the default
    assert catalogue["teacher (embedded)"].step_choices[0] == catalogue["teacher (embedded)"].num_steps > 1


def test_a_models_folder_lists_its_models_and_skips_other_files(tmp_path: Path, tiny_student_file: Path) -> None:
    folder = tmp_path / "models"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.safetensors").write_bytes(tiny_student_file.read_bytes())
    (folder / "sub" / "deep.safetensors").write_bytes(tiny_student_file.read_bytes())  # not searched
    (folder / "broken.safetensors").write_bytes(b"not a model")
    (folder / "notes.txt").write_text("x")
    lines: list[str] = []
    catalogue = model_catalogue(models_dir=folder, report=lines.append)
    assert list(catalogue)[2:] == ["a.safetensors"]
    assert len(lines) == 1 and lines[0].startswith(str(folder / "broken.safetensors")) and "not listed" in lines[0]


def test_two_files_of_one_name_get_distinct_labels(tmp_path: Path, tiny_student_file: Path) -> None:
    other = tmp_path / "other" / STUDENT
    other.parent.mkdir()
    other.write_bytes(tiny_student_file.read_bytes())
    labels = list(model_catalogue([tiny_student_file, other]))
    assert labels[2:] == [STUDENT, str(other)]


def test_a_missing_or_unusable_model_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such model file"):
        model_catalogue([tmp_path / "nope.safetensors"])
    with pytest.raises(NotFoundError, match="no such folder"):
        model_catalogue(models_dir=tmp_path / "nope")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\0" * 16)
    with pytest.raises(Exception, match=str(bad)) as err:
        model_catalogue([bad])
    assert "\n" not in str(err.value)


def test_only_a_listed_label_reaches_a_file(models: ModelCache, photo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model '/etc/passwd': choose one of student"):
        upscale_file(photo, "photo.png", JobSettings(model="/etc/passwd"), models, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_model_is_loaded_once_and_kept(models: ModelCache) -> None:
    assert models.backend(STUDENT) is models.backend(STUDENT)


def test_the_job_writes_what_tadsr_upscale_writes(models: ModelCache, photo: Path, tmp_path: Path,
                                                   tiny_student_file: Path) -> None:
    result = upscale_file(photo, "photo.png", JobSettings(model=STUDENT, tile=32, seed=3), models, tmp_path / "job")
    assert result.output == tmp_path / "job" / "photo_x4.png"
    assert result.input_size == (56, 40) and result.output_size == (224, 160)
    assert "56x40 -> 224x160 (8-bit RGB PNG" in result.summary and f"with {STUDENT}, 1 step" in result.summary
    cli = CliRunner().invoke(main, ["upscale", "-i", str(photo), "-o", str(tmp_path / "cli"), "--model",
                                    str(tiny_student_file), "--tile", "32", "--seed", "3", "-q"])
    assert cli.exit_code == 0, cli.output
    np.testing.assert_array_equal(read_image(result.output).pixels, read_image(tmp_path / "cli" / "photo.png").pixels)


def test_16_bit_and_alpha_are_kept_and_previews_are_8_bit(models: ModelCache, tmp_path: Path) -> None:
    source = tmp_path / "deep.png"
    cv2.imwrite(str(source), RNG.integers(0, 65536, (20, 24, 4), dtype=np.uint16))
    result = upscale_file(source, "deep.png", JobSettings(model=STUDENT, tile=0), models, tmp_path / "job")
    out = cv2.imread(str(result.output), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (80, 96, 4)
    assert "16-bit RGBA PNG" in result.summary
    before, after = (np.asarray(Image.open(p)) for p in (result.before, result.after))
    assert before.dtype == after.dtype == np.uint8 and before.shape == after.shape == (80, 96, 4)


def test_the_teacher_runs_its_steps_and_other_step_counts_are_refused(models: ModelCache, photo: Path,
                                                                       tmp_path: Path) -> None:
    result = upscale_file(photo, "photo.png", JobSettings(model=TEACHER, steps=4, tile=0, outscale=2.0), models,
                          tmp_path / "job")
    assert result.output.name == "photo_x2.png" and result.output_size == (112, 80) and "4 steps" in result.summary
    with pytest.raises(ConfigError, match="runs 4 or 1 steps, not 3"):
        upscale_file(photo, "photo.png", JobSettings(model=TEACHER, steps=3), models, tmp_path / "bad")
    with pytest.raises(ConfigError, match="runs 1 steps, not 4"):
        upscale_file(photo, "photo.png", JobSettings(model=STUDENT, steps=4), models, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_the_page_passes_its_sampler_to_the_teacher(models: ModelCache, photo: Path, tmp_path: Path) -> None:
    """The page's sampler control: the stochastic sampler gives the teacher other pixels than the deterministic one,
    the same as `tadsr upscale --sampler stochastic`; an unknown sampler is refused before any work."""
    runs = {}
    for sampler in ("deterministic", "stochastic"):
        result = upscale_file(photo, "photo.png", JobSettings(model=TEACHER, steps=4, tile=0, sampler=sampler),
                              models, tmp_path / sampler)
        assert f"4 steps ({sampler} sampler)" in result.summary
        runs[sampler] = np.asarray(Image.open(result.output)).astype(int)
    assert np.abs(runs["deterministic"] - runs["stochastic"]).mean() > 0.5
    with pytest.raises(ConfigError, match="sampler must be one of deterministic, stochastic"):
        JobSettings(model=TEACHER, sampler="ddim")


def test_a_bad_upload_is_one_line_naming_the_users_file_not_the_upload_path(models: ModelCache,
                                                                              tmp_path: Path) -> None:
    upload = tmp_path / "0123abcd" / "notes.png"
    upload.parent.mkdir()
    upload.write_text("these are not pixels")
    with pytest.raises(ImageError) as err:
        upscale_file(upload, "notes.png", JobSettings(model=STUDENT), models, tmp_path / "job")
    message = str(err.value)
    assert message.startswith("notes.png: not a readable image") and str(tmp_path) not in message
    assert "\n" not in message and not (tmp_path / "job").exists()


def test_the_pixel_limits_of_the_cli_apply(models: ModelCache, photo: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"^photo.png: 56x40 = 2,240 pixels exceeds the limit of 2,000"):
        upscale_file(photo, "photo.png", JobSettings(model=STUDENT), models, tmp_path / "job", max_pixels=2000)
    huge = tmp_path / "huge.png"
    huge.write_bytes(photo.read_bytes())
    with huge.open("r+b") as f:
        f.truncate(200 << 20)  # sparse: 200 MB by its size, nothing to read
    with pytest.raises(ImageError, match=r"^huge.png: 209,715,200 bytes is more than any image within the limit"):
        upscale_file(huge, "huge.png", JobSettings(model=STUDENT), models, tmp_path / "job", max_pixels=1000)
    with pytest.raises(ImageError, match=r"^photo.png: the output would be 896x640"):  # 16 x 2,240 < 573,440
        upscale_file(photo, "photo.png", JobSettings(model=STUDENT, outscale=16.0), models, tmp_path / "job",
                     max_pixels=3000)
    assert not (tmp_path / "job").exists()


@pytest.mark.slow
def test_progress_follows_the_tiles_and_cancel_stops_between_them(models: ModelCache, photo: Path,
                                                                  tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    upscale_file(photo, "photo.png", JobSettings(model=STUDENT, tile=32), models, tmp_path / "a",
                 progress=lambda done, total: seen.append((done, total)))
    total = seen[-1][1]
    assert total > 2 and seen == [(i, total) for i in range(1, total + 1)]
    calls: list[int] = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled, match="photo.png: cancelled"):
        upscale_file(photo, "photo.png", JobSettings(model=STUDENT, tile=32), models, tmp_path / "b",
                     cancelled=cancelled)
    assert len(calls) == 3 and not (tmp_path / "b").exists()  # stopped at the second tile, nothing written


def test_one_job_at_a_time_on_the_device(models: ModelCache, photo: Path, tmp_path: Path) -> None:
    models.lock.acquire()
    done = threading.Event()
    job = threading.Thread(target=lambda: (upscale_file(photo, "photo.png", JobSettings(model=STUDENT), models,
                                                        tmp_path / "job"), done.set()))
    job.start()
    time.sleep(0.5)
    assert not done.is_set()  # waiting for the device
    models.lock.release()
    job.join(60)
    assert done.is_set()


def test_output_names_and_preview_sizes() -> None:
    assert output_name("IMG 01.jpeg", 4) == "IMG 01_x4.png" and output_name("a.png", 2.5) == "a_x2.5.png"
    long = output_name("é" * 200 + ".png", 4)
    assert len(long.encode()) <= 255 and long.endswith("_x4.png")
    assert preview_size(1024, 512) == (1024, 512)
    assert preview_size(8000, 4000) == (PREVIEW_SIDE, PREVIEW_SIDE // 2)
    assert preview_size(3000, 9000) == (683, PREVIEW_SIDE)


@pytest.mark.slow
def test_a_large_result_gets_small_previews_and_a_full_download(tmp_path: Path, tiny_student_file: Path) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(RNG.integers(0, 256, (8, 600, 3), dtype=np.uint8)).save(big)  # 2400 px wide at x4
    models = ModelCache(model_catalogue([tiny_student_file]), torch.device("cpu"))
    models.backend(STUDENT)  # opened before the job, as `tadsr serve` opens its default model
    result = upscale_file(big, "big.png", JobSettings(model=STUDENT, tile=0), models, tmp_path / "job")
    assert Image.open(result.output).size == (2400, 32)
    assert Image.open(result.before).size == Image.open(result.after).size == (PREVIEW_SIDE, 27)


def test_sweep_deletes_what_is_older_than_an_hour(tmp_path: Path) -> None:
    old, new = tmp_path / "a" / "old.png", tmp_path / "b" / "new.png"
    for path in (old, new):
        path.parent.mkdir()
        path.write_bytes(b"x")
    hour_ago = time.time() - 3601
    os.utime(old, (hour_ago, hour_ago))
    os.utime(old.parent, (hour_ago, hour_ago))
    assert sweep(tmp_path) == 1
    assert not old.parent.exists() and new.exists() and tmp_path.exists()


def test_closing_a_page_cancels_its_jobs_and_deletes_its_files(tmp_path: Path) -> None:
    sessions = Sessions(tmp_path)
    upload = tmp_path / "hash" / "photo.png"
    upload.parent.mkdir()
    upload.write_bytes(b"x")
    job_dir, flag = sessions.start_job("abc", upload)
    job_dir.mkdir(parents=True)
    (job_dir / "photo_x4.png").write_bytes(b"y")
    other_dir, other_flag = sessions.start_job("xyz", upload.with_name("other.png"))
    assert job_dir != other_dir
    sessions.close("abc")
    assert flag.is_set() and not other_flag.is_set()
    assert not upload.exists() and not job_dir.exists() and not job_dir.parent.exists()


def test_page_numbers_are_checked_in_one_line() -> None:
    assert _number("3", "seed") == 3 and _number(2.0, "tile") == 2 and _number("2.5", "scale", integer=False) == 2.5
    for value, message in [(None, "seed is empty"), ("x", "seed must be a number"), (1.5, "seed must be a whole"),
                           ("nan", "seed must be a finite number"), (float("inf"), "seed must be a finite")]:
        with pytest.raises(ConfigError, match=message):
            _number(value, "seed")


def test_without_gradio_serve_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'tadsr\[web\]'"):
        import_gradio()
    result = CliRunner().invoke(main, ["serve", "--port", "7999"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "tadsr: error: tadsr serve needs Gradio, an optional extra: pip install 'tadsr[web]'"]


def test_a_model_saved_after_start_is_not_reachable_by_path(models: ModelCache, tmp_path: Path,
                                                             photo: Path) -> None:
    path = tmp_path / "late.safetensors"
    save_model(SRModel(models.backend(STUDENT).config), path)
    with pytest.raises(ConfigError, match="unknown model"):
        upscale_file(photo, "photo.png", JobSettings(model=str(path)), models, tmp_path / "job")


@pytest.mark.slow
def test_a_port_in_use_is_one_line_before_anything_loads() -> None:
    pytest.importorskip("gradio")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"tadsr: error: cannot serve on 127.0.0.1:{port} (Address already in use): choose another --port or --host"]
