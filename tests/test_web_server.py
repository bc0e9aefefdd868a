"""`tadsr serve` as a user's program meets it: a real server on a free local port, called through gradio_client."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import WebServer, start_server, stop_server

gradio_client = pytest.importorskip("gradio_client", reason="needs the web extra: pip install 'tadsr[web]'")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

RNG = np.random.default_rng(11)
STUDENT, TEACHER = "tiny-student.safetensors", "teacher.safetensors"


@pytest.fixture(scope="module")
def client(web_server: WebServer, tmp_path_factory: pytest.TempPathFactory) -> Client:
    return Client(web_server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")),
                  analytics_enabled=False)


def _photo(path: Path, height: int, width: int) -> Path:
    Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def upscale(client: Client, path: Path, model: str = STUDENT, steps: int = 1, seed: int = 0, tile: int = 256,
            outscale: float = 4, color_fix: str = "none") -> tuple:
    return client.predict(handle_file(str(path)), model, steps, seed, tile, outscale, color_fix, api_name="/upscale")


@pytest.mark.slow
def test_the_api_upscales_a_photo(client: Client, tmp_path: Path) -> None:
    (before, after), output, summary = upscale(client, _photo(tmp_path / "cat.png", 30, 44))
    assert Path(output).name == "cat_x4.png" and Image.open(output).size == (176, 120)
    assert Image.open(before).size == Image.open(after).size == (176, 120)
    assert summary.startswith("44x30 -> 176x120 (8-bit RGB PNG") and f"with {STUDENT}, 1 step, on cpu" in summary


def test_the_api_runs_the_teacher_at_another_scale(client: Client, tmp_path: Path) -> None:
    _, output, summary = upscale(client, _photo(tmp_path / "t.jpg", 24, 24), model=TEACHER, steps=4, outscale=2,
                                 color_fix="wavelet")
    assert Path(output).name == "t_x2.png" and Image.open(output).size == (48, 48) and "4 steps" in summary
    # the sampler, the page's last input: left out above (a client of the earlier API), given here
    photo = _photo(tmp_path / "s.png", 24, 24)
    _, output, summary = client.predict(handle_file(str(photo)), TEACHER, 4, 0, 256, 4, "none", "stochastic",
                                        api_name="/upscale")
    assert "4 steps (stochastic sampler)" in summary and Image.open(output).size == (96, 96)


def test_the_api_gets_the_clis_one_line_message_for_a_bad_upload(client: Client, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("no pixels here")
    with pytest.raises(AppError) as err:
        upscale(client, bad)
    message = str(err.value)
    assert message.startswith("notes.png: not a readable image") and "Traceback" not in message
    assert "\n" not in message


def test_the_api_cannot_name_a_model_file(client: Client, tmp_path: Path, tiny_student_file: Path) -> None:
    with pytest.raises(AppError, match="unknown model"):
        upscale(client, _photo(tmp_path / "p.png", 16, 16), model=str(tiny_student_file))


def test_a_cancelled_job_stops_and_frees_the_device(client: Client, web_server: WebServer, tmp_path: Path) -> None:
    big = _photo(tmp_path / "long.png", 240, 240)  # about a hundred 32-pixel tiles x 4 teacher steps
    job = client.submit(handle_file(str(big)), TEACHER, 4, 0, 32, 4, "none", api_name="/upscale")
    deadline = time.monotonic() + 60
    while not job.status().progress_data and time.monotonic() < deadline:  # the first tiles are done
        time.sleep(0.2)
    assert job.status().progress_data, "the job reported no tile progress"
    job.cancel()
    start = time.monotonic()
    upscale(client, _photo(tmp_path / "next.png", 16, 16))  # waits for the device: the cancelled job let go
    waited = time.monotonic() - start
    assert not list(web_server.root.rglob("long_x4.png")), "the cancelled job ran to its end"
    assert waited < 30


@pytest.mark.slow
def test_a_public_host_is_warned_about_and_sigterm_cleans_up(tmp_path: Path, tiny_student_file: Path) -> None:
    pytest.importorskip("gradio")
    server = start_server(tmp_path / "serve.log", "--host", "0.0.0.0", "--model", str(tiny_student_file))
    try:
        client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"),
                        analytics_enabled=False)
        upscale(client, _photo(tmp_path / "p.png", 16, 16))
        assert list(server.root.rglob("p_x4.png"))
    finally:
        status = stop_server(server)
    log = server.log.read_text()
    assert "tadsr: warning: serving on 0.0.0.0: anyone who can reach this machine's port" in log
    assert status == 0 and not server.root.exists()
