"""Hostile input to what every command shares (issue 32): devices this build lacks (class 7), settings that would
be dropped (class 4), the debris of a killed write (class 5), and the small leaks (class 8): a libpng complaint on
stderr, a teacher cache missing a tensor, a file too large for the memory, a pickle's advice, an output replaced
without --overwrite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tadsr.checkpoints import CheckpointError, read_state_dict
from tadsr.cli import main
from tadsr.fileio import atomic_write_bytes, remove_stale_temporaries
from tadsr.model import resolve_model_path
from test_training import _trainer


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _png(path: Path, side: int = 16, seed: int = 0) -> Path:
    pixels = (np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# --- class 7: devices torch knows but tadsr or this build cannot use ----------------------------------------------

COMMANDS = {
    "upscale": ("upscale", "-i", "IN", "-o", "OUT"),
    "evaluate": ("evaluate", "--gt", "IN", "--lr", "IN", "--models", "student", "-o", "OUT"),
    "train-teacher": ("train-teacher", "--data", "IN", "--out", "OUT", "--steps", "1"),
    "bench": ("bench", "--sizes", "16", "--quick"),
}


@pytest.mark.parametrize("device", ["mps", "xpu", "meta", "hpu", "cuda:7", "gpu"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_device_tadsr_cannot_use_is_one_line_before_any_work(command: str, device: str, tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    args = [a.replace("IN", str(tmp_path)).replace("OUT", str(tmp_path / "out")) for a in COMMANDS[command]]
    code, output = _run(*args, "--device", device)
    assert code == 1, output
    (line,) = output.strip().splitlines()
    assert line.startswith(f"tadsr: error: --device {device}: "), line
    assert not (tmp_path / "out").exists()


# --- class 4: a setting is honoured or refused, never dropped -----------------------------------------------------

def test_a_model_setting_init_would_drop_is_refused(tmp_path: Path) -> None:
    teacher = resolve_model_path("teacher")
    code, output = _run("train-teacher", "--init", str(teacher), "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                        "--dry-run", "model.unet.model_channels=96")
    assert code == 1
    assert output.strip() == ("tadsr: error: model.unet.model_channels=96 (the --init file's: 64): --init fine-tunes "
                              "that file's architecture and schedule; drop the setting (or train a teacher from "
                              "random weights with it)")
    code, output = _run("train-teacher", "--init", str(teacher), "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                        "--dry-run", "model.unet.model_channels=64")  # restating the file's value is fine
    assert code == 0 and '"model_channels": 64' in output


@pytest.mark.parametrize(("flag", "override"), [("--steps", "run.steps=1.5"), ("--steps", "run.steps=3"),
                                                ("--seed", "run.seed=2"), ("--data", "data.path=elsewhere")])
def test_a_key_set_by_its_flag_and_an_override_is_refused(flag: str, override: str, tmp_path: Path) -> None:
    value = str(tmp_path) if flag == "--data" else "1"
    args = ["train-teacher", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--dry-run", override]
    code, output = _run(*(args if flag == "--data" else [*args, flag, value]))
    assert code == 1
    key = override.split("=")[0]
    assert output.strip() == f"tadsr: error: {key}: set both by {flag} {value} and by {override}; give one"


@pytest.mark.parametrize("extra", [("--role", "student"), ("--schedule", "faceir-tadsr"), ("--preset", "faceir"),
                                   ("--ncnn-param", "PARAM")])
def test_a_convert_option_it_would_not_use_is_refused(extra: tuple[str, str], tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text("{}")
    (tmp_path / "PARAM").write_text("")
    option = [a.replace("PARAM", str(tmp_path / "PARAM")) for a in extra]
    code, output = _run("convert", "--unet", "u.pth", "--config", str(config), "-o", str(tmp_path / "o.safetensors"),
                        *option)
    assert code == 1
    assert output.strip().startswith(f"tadsr: error: {extra[0]}: not used by `tadsr convert resshift`")


def test_convert_replaces_an_output_only_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"mine")
    code, output = _run("convert", "--unet", "u.pth", "-o", str(out))
    assert code == 1 and output.strip() == f"tadsr: error: {out}: exists; pass --overwrite to replace it"
    assert out.read_bytes() == b"mine"
    code, output = _run("convert", "--unet", str(tmp_path / "missing.pth"), "-o", str(out), "--overwrite")
    assert code == 1 and "no such checkpoint file" in output and out.read_bytes() == b"mine"  # past the check


def test_a_config_too_large_for_its_weights_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """convert --config: the network is compared with the file's shapes on the meta device first. This config's
    network would need about 40 GB; refused with nothing allocated (a real build would not fit this machine)."""
    import json

    from tadsr.config import config_to_json
    from tadsr.presets import model_config

    config = json.loads(config_to_json(model_config("realsr-x4")))
    config["unet"]["model_channels"] = 1024
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(config))
    weights = tmp_path / "u.pth"
    torch.save({"state_dict": {"conv_in.weight": torch.zeros(1)}}, weights)
    code, output = _run("convert", "--unet", str(weights), "--config", str(path), "-o", str(tmp_path / "o.safetensors"),
                        "--autoencoder", str(weights))
    assert code == 1
    (line,) = output.strip().splitlines()
    assert line.startswith(f"tadsr: error: {weights}: does not fit SwinUNet: ") and "missing key(s)" in line


# --- class 5: a kill leaves no debris ---------------------------------------------------------------------------

def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The tadsr command turns SIGTERM into an exit that runs every clean-up: an atomic write interrupted by it
    removes its temporary file, and the process says so in one line and exits 143."""
    target = tmp_path / "out.bin"
    script = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from tadsr import cli, fileio

        def write(tmp: Path) -> None:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # never reached: the signal raises here

        @cli.main.command("write-slowly")
        def write_slowly() -> None:
            fileio.atomic_write({str(target)!r}, write)

        cli.main(["write-slowly"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip() == "tadsr: error: stopped by SIGTERM; nothing half-written was left"
    assert list(tmp_path.iterdir()) == []


def test_the_next_write_removes_what_a_killed_writer_left_and_nothing_else(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".a.png.{dead.stdout.strip()}.abcd1234.tmp"  # a SIGKILLed writer's (its pid is gone)
    old = tmp_path / ".b.png.abcd_123.tmp"  # tadsr 0.1's pattern, without a pid
    live = tmp_path / f".c.png.{os.getppid()}.wxyz5678.tmp"  # a running process's: still being written
    mine = tmp_path / ".notes.tmp"  # not our pattern
    for path in (left, old, live, mine):
        path.write_bytes(b"x")
    with pytest.warns(RuntimeWarning, match="removed a temporary file left by an interrupted write"):
        atomic_write_bytes(tmp_path / "new.bin", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, mine.name, "new.bin"])
    assert remove_stale_temporaries(tmp_path) == []


def test_upscale_removes_a_killed_runs_temporary_output(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / f".a.png.{dead.stdout.strip()}.0a1b2c3d.tmp").write_bytes(b"\x89PNG half")
    code, output = _run("upscale", "-i", str(tmp_path / "a.png"), "-o", str(out), "-q", "-t", "0")
    assert code == 0, output
    assert f"tadsr: warning: {out}/.a.png." in output and "removed a temporary file" in output
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]


# --- class 8: the small leaks ----------------------------------------------------------------------------------

def test_a_damaged_png_profile_is_not_libpngs_line_on_stderr(tmp_path: Path) -> None:
    import struct
    import zlib

    png = _png(tmp_path / "src.png").read_bytes()
    payload = b"x\x00\x00" + zlib.compress(b"ab")  # an iCCP chunk whose profile is too short
    chunk = struct.pack(">I", len(payload)) + b"iCCP" + payload + struct.pack(">I", zlib.crc32(b"iCCP" + payload))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png[:33] + chunk + png[33:])
    result = subprocess.run([sys.executable, "-m", "tadsr.cli", "upscale", "-i", str(tmp_path / "in"), "-o",
                             str(tmp_path / "out"), "-q", "-t", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert (tmp_path / "out" / "a.png").is_file()


def test_a_file_larger_than_the_memory_fails_alone(tmp_path: Path) -> None:
    """--max-pixels 0 under an address-space limit: a file too large to read is that file's one line."""
    import resource

    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "a.png")
    Image.fromarray(np.zeros((3000, 3000, 3), np.uint8)).save(tmp_path / "in" / "b.bmp")  # 27 MB to read
    script = textwrap.dedent(f"""
        import resource, sys
        from tadsr.data.image_io import ImageError, read_image
        import numpy
        ballast = numpy.ones(1)  # imports done; now leave too little room for the big file
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 20 * 2**20, hard))
        for name in ("a.png", "b.bmp"):
            try:
                read_image({str(tmp_path / "in")!r} + "/" + name, max_pixels=0)
                print("read", name)
            except ImageError as err:
                print("error", err)
    """)
    assert resource  # the limit is set in the child only
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[0] == "read a.png"
    assert lines[1] == f"error {tmp_path / 'in' / 'b.bmp'}: not enough memory to read it (keep --max-pixels on, or " \
                       "free memory)"


def test_a_teacher_cache_missing_a_tensor_is_rebuilt(photo_dir: Path, teacher_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    trainer = _trainer(photo_dir, teacher_file, tmp_path, "distill.teacher_cache=4")
    cache = trainer.teacher_cache()
    del cache["z_tch"]
    torch.save({**cache, "key": trainer.cache_key()}, tmp_path / "teacher_cache.pt")
    rebuilt = trainer.teacher_cache()
    assert "teacher_cache.pt: a damaged teacher cache (no z_tch); rebuilding it" in capsys.readouterr().err
    assert rebuilt["z_tch"].shape[0] == 4


def test_a_pickle_is_refused_without_torchs_advice_to_run_it(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "hook": os.getcwd}, path)
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(path)
    assert str(caught.value) == (f"{path}: it holds a Python object (posix.getcwd) besides tensors, which tadsr never "
                                 "unpickles (no code in a file is run); save its state dict or use safetensors")
