"""The ``Backend`` contract, for every backend ``open_model`` opens, and what ``open_model`` refuses in one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tadsr.backends import model_info, open_model
from tadsr.checkpoints import SD_STUDENT_FORMAT, atomic_save_file, model_kind
from tadsr.cli import main
from tadsr.errors import ConfigError, NotFoundError, TadsrError
from tadsr.inference.backend import Backend
from tadsr.inference.pipeline import step_choices
from tadsr.inference.upscaler import Upscaler

KINDS = ["tadsr", pytest.param("onnx", marks=pytest.mark.slow), pytest.param("sd-student", marks=pytest.mark.slow),
         pytest.param("diffusers", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=KINDS)
def opened(request: pytest.FixtureRequest) -> tuple[str, Backend]:
    """(what was opened, its backend): the embedded student, a tiny VQ student exported to ONNX, an SD student file,
    a diffusers pipeline folder (2 sampler steps)."""
    kind = request.param
    if kind == "tadsr":
        return "student", open_model("student", device="cpu")
    if kind == "onnx":
        path = request.getfixturevalue("onnx_student_file")
        return str(path), open_model(path)
    if kind == "sd-student":
        path = request.getfixturevalue("sd_student_file")
        return str(path), open_model(path, device="cpu")
    path = request.getfixturevalue("pipeline_dir")
    return str(path), open_model(path, device="cpu", steps=2)


def _sizes(backend: Backend) -> tuple[int, int]:
    """A padded LR size of this backend: multiples of its size multiple, of two shapes."""
    m = backend.size_multiple
    return 2 * m, 3 * m


def test_the_noise_has_its_shape_and_follows_the_seed(opened: tuple[str, Backend]) -> None:
    _, backend = opened
    h, w = _sizes(backend)
    f = backend.noise_factor
    noise = backend.draw_noise(h, w, seed=7)
    assert noise.dim() == 5 and noise.shape[0] >= 1 and noise.shape[1] == 1
    assert tuple(noise.shape[3:]) == (h // f, w // f)
    assert torch.equal(noise, backend.draw_noise(h, w, seed=7))  # the same seed, the same bits
    assert not torch.equal(noise, backend.draw_noise(h, w, seed=8))


def test_run_turns_tiles_and_their_noise_into_hr_tiles(opened: tuple[str, Backend]) -> None:
    _, backend = opened
    h, w = _sizes(backend)
    lr = (torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(backend.device)
    noise = torch.cat([backend.draw_noise(h, w, seed) for seed in (0, 1)], dim=1).to(backend.device)  # (D, 2, ...)
    out = backend.run(lr, noise).float()
    assert out.shape == (2, 3, h * backend.scale, w * backend.scale)
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1


def test_the_upscaler_tiles_any_backend_deterministically(opened: tuple[str, Backend]) -> None:
    """An odd-sized image, whole and in tiles of twice the size multiple: scale x its size, the same bits twice."""
    _, backend = opened
    m, s = backend.size_multiple, backend.scale
    image = np.random.default_rng(0).integers(0, 256, (2 * m + 3, 3 * m - 1, 3), dtype=np.uint8)
    whole = Upscaler(backend, tile=0, seed=3).upscale(image)
    tiled = Upscaler(backend, tile=2 * m, tile_overlap=m // 2, seed=3)
    first = tiled.upscale(image)
    assert whole.shape == first.shape == (image.shape[0] * s, image.shape[1] * s, 3)
    assert np.array_equal(first, tiled.upscale(image))
    assert tiled.tile_size() == 2 * m


def test_model_info_says_what_open_model_opens(opened: tuple[str, Backend]) -> None:
    name, backend = opened
    info = model_info(name)
    assert info.scale == backend.scale and info.path.exists()
    assert info.kind == (model_kind(info.path))
    if info.kind == "diffusers":
        assert (info.role, info.num_steps) == ("teacher", 20)  # its default sampler steps
    else:  # the embedded student and the one-step files run one step
        assert step_choices(info.role, info.num_steps) == (1,)


# --- what is not a model, and settings a model does not take ----------------------------------------------------


def _not_a_model(case: str, tmp_path: Path) -> tuple[Path, type[TadsrError], str]:
    """(path, the error, what its line says) of a path whose kind cannot be told or that holds no model."""
    if case == "folder":
        (tmp_path / "folder").mkdir()
        return tmp_path / "folder", ConfigError, "not a model folder (no model_index.json"
    if case == "text":
        (tmp_path / "notes.txt").write_text("not a model")
        return tmp_path / "notes.txt", TadsrError, "not a tadsr model file"
    return tmp_path / "nothing.safetensors", NotFoundError, "no such model file"


def _upscale(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """`tadsr upscale` of one small image into tmp_path/out: exit code and stderr's lines."""
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "lr.png")
    result = CliRunner().invoke(main, ["upscale", "-i", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"), "-q",
                                       *args])
    return result.exit_code, result.stderr.strip().splitlines()


@pytest.mark.parametrize("case", ["folder", "text", "missing"])
def test_a_path_that_is_not_a_model_is_one_line_naming_it(case: str, tmp_path: Path) -> None:
    path, error, needle = _not_a_model(case, tmp_path)
    for call in (open_model, model_info):
        with pytest.raises(error) as err:
            call(path)
        assert str(path) in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)
    code, lines = _upscale(tmp_path, "--model", str(path))
    assert code == 1 and len(lines) == 1 and str(path) in lines[0] and needle in lines[0]
    assert not (tmp_path / "out").exists()


def _fake(kind: str, tmp_path: Path) -> Path:
    """A path of a kind whose metadata is all there is (``model_info`` reads it; ``open_model`` checks its settings
    before it loads anything): an ONNX file that is not one, an SD student file without weights, a pipeline folder
    of empty weight files."""
    if kind == "onnx":
        (tmp_path / "graph.onnx").write_bytes(b"not read")
        return tmp_path / "graph.onnx"
    if kind == "sd-student":
        atomic_save_file({"prompt_embeds": torch.zeros(1)}, tmp_path / "sd.safetensors",
                         {"format": SD_STUDENT_FORMAT, "vae_config": json.dumps({"block_out_channels": [8, 8, 8]})})
        return tmp_path / "sd.safetensors"
    folder = tmp_path / "pipeline"
    index = {"_class_name": "StableDiffusionUpscalePipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"],
             "low_res_scheduler": ["diffusers", "DDPMScheduler"]}
    for name in ("unet", "vae", "scheduler", "low_res_scheduler"):
        (folder / name).mkdir(parents=True)
    for name in ("unet", "vae"):
        (folder / name / "weights.safetensors").write_bytes(b"")
    (folder / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8, 8, 8]}))
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize(("kind", "setting", "flags"), [
    ("tadsr", "prompt", ("--prompt", "a cat")),
    ("tadsr", "noise_level", ("--noise-level", "30")),
    ("onnx", "sampler", ("--sampler", "stochastic")),
    ("onnx", "channels_last", ("--channels-last",)),
    ("onnx", "dtype", ("--bf16",)),
    ("onnx", "steps", ("--steps", "2")),
    ("sd-student", "compile", ("--compile",)),
    ("sd-student", "dtype", ("--bf16",)),
    ("sd-student", "steps", ("--steps", "2")),
    ("diffusers", "channels_last", ("--channels-last",)),
    ("diffusers", "dtype", ("--bf16",)),
])
def test_a_setting_the_model_does_not_take_is_one_line(kind: str, setting: str, flags: tuple[str, ...],
                                                         tmp_path: Path, tiny_student_file: Path) -> None:
    """Not silently ignored: a ConfigError naming the setting and the model; `tadsr upscale` writes nothing."""
    path = tiny_student_file if kind == "tadsr" else _fake(kind, tmp_path)
    value = {"prompt": "a cat", "noise_level": 30, "sampler": "stochastic", "channels_last": True, "compile": True,
             "dtype": torch.bfloat16, "steps": 2}[setting]
    with pytest.raises(ConfigError) as err:
        open_model(path, **{setting: value})
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert ("runs 1 steps, not 2" if setting == "steps" else setting) in message
    if kind == "onnx":
        return  # `tadsr upscale` reads an ONNX file's metadata through a session first: this one has none
    code, lines = _upscale(tmp_path, "--model", str(path), *flags)
    assert code == 1 and lines == [f"tadsr: error: {message}"]
    assert not (tmp_path / "out").exists()


def test_a_pipeline_samples_with_its_own_scheduler_and_says_so(tmp_path: Path) -> None:
    """--sampler with a diffusers folder: a warning (as before), not an error; the folder is then read."""
    path = tmp_path / "pipeline"
    path.mkdir()
    (path / "model_index.json").write_text("{not json")
    said: list[str] = []
    with pytest.raises(ConfigError, match="not a diffusers model index"):
        open_model(path, sampler="stochastic", report=said.append)
    assert len(said) == 1 and str(path) in said[0] and "own scheduler; sampler 'stochastic' is ignored" in said[0]
    with pytest.warns(UserWarning, match="own scheduler"), pytest.raises(ConfigError):
        open_model(path, sampler="stochastic")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="not a diffusers model index"):  # no sampler asked for: no warning
            open_model(path)


def test_export_takes_only_a_tadsr_model(tmp_path: Path) -> None:
    path = _fake("sd-student", tmp_path)
    result = CliRunner().invoke(main, ["export", str(path), "-o", str(tmp_path / "x.onnx")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1
    assert f"{path}: an SD student; tadsr export takes a tadsr model" in lines[0]
    assert not (tmp_path / "x.onnx").exists()
