"""Forged model files and bad training settings: every value is type- and range-checked where it is read, tensor
shapes are checked against the header before anything is allocated, and the message names the key, the value and
what is allowed, in one line (issue classes 3 and 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tadsr.checkpoints import CheckpointError, atomic_save_file
from tadsr.model import load_model

TADSR = str(Path(sys.executable).parent / "tadsr")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TADSR, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _forge(source: Path, target: Path, edit: dict[str, object], tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A copy of ``source`` whose metadata config has ``edit`` applied (keys like 'unet.model_channels')."""
    with safe_open(str(source), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    for key, value in edit.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    atomic_save_file(tensors if tensors is not None else load_file(str(source)), target,
                     {**meta, "config": json.dumps(config)})
    return target


@pytest.mark.parametrize(("edit", "needle"), [
    ({"unet.model_channels": -64}, "model.unet.model_channels = -64: needs between 32 and 1024"),
    ({"unet.model_channels": 16384}, "model.unet.model_channels = 16384: needs between 32 and 1024"),
    ({"unet.num_res_blocks": [1000000, 1, 1]}, "model.unet.num_res_blocks = (1000000, 1, 1): needs between 1 and 16"),
    ({"first_stage.factor": 4.0}, "model.first_stage.factor = 4.0: needs an integer"),
    ({"unet.window_size": "8"}, None),  # a number written as a string is read as that number
])
def test_a_forged_model_config_fails_in_one_line_before_anything_is_built(tmp_path: Path, tiny_student_file: Path,
                                                                         edit: dict, needle: str | None) -> None:
    path = _forge(tiny_student_file, tmp_path / "forged.safetensors", edit)
    if needle is None:
        assert load_model(path).config.unet.window_size == 8
        return
    with pytest.raises(CheckpointError, match="forged.safetensors: invalid model config") as err:
        load_model(path)
    assert needle in str(err.value) and "weights_only=False" not in str(err.value)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (24, 20)).save(tmp_path / "in" / "a.png")
    result = _run("upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(path), "-q")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and needle in lines[0]


def test_tensor_shapes_are_checked_against_the_header_before_allocating(tmp_path: Path,
                                                                       tiny_student_file: Path) -> None:
    tensors = load_file(str(tiny_student_file))
    # the config asks for 64 channels; the file's tensors are the 32-channel network's
    path = _forge(tiny_student_file, tmp_path / "forged.safetensors", {"unet.model_channels": 64}, tensors)
    with pytest.raises(CheckpointError, match=r"forged\.safetensors: does not fit SRModel: .*shape mismatch"):
        load_model(path)


@pytest.mark.parametrize(("override", "needle"), [
    ("run.batch_size=abc", "run.batch_size = 'abc': needs an integer"),
    ("optim.betas=5", "optim.betas = 5: needs a list of 2"),
    ("run.save_every=0", "run.save_every = 0: needs >= 1"),
    ("data.gt_size=0", "data.gt_size = 0: needs between 8 and 8192"),
    ("run.amp=foo", "run.amp = 'foo': needs one of 'none', 'bf16', 'fp16'"),
    ("run.steps=1.5", "run.steps = 1.5: needs an integer"),
    ("optim.lr=1e39", "optim.lr = 1e+39: needs between 0 and 1"),
    ("data.gt_size=72", "data.gt_size = 72: this model needs a multiple of 64"),
    ("optim.ema_warmup=-1", "optim.ema_warmup = -1.0: needs between 0 and 10"),
    ("run.raw_weights=2", "run.raw_weights = 2: needs true or false"),
])
def test_bad_training_settings_fail_in_one_line_naming_key_value_and_what_is_allowed(tmp_path: Path, override: str,
                                                                                      needle: str) -> None:
    result = _run("train-teacher", "--preset", "tiny", "--out", str(tmp_path), "--dry-run", override)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and needle in lines[0], result.stderr


@pytest.mark.slow
def test_a_data_folder_of_only_bad_images_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "photos"
    data.mkdir()
    (data / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (data / "b.jpg").write_bytes(b"")
    result = _run("train-teacher", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "run"),
                  "--steps", "1", "-q", "data.val_count=0")
    errors = [line for line in result.stderr.splitlines() if line.startswith("tadsr: error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(errors) == 1 and "no readable image" in errors[0]
