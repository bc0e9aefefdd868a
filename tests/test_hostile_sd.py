"""Hostile SD-based models (issue 32): a damaged SD student file or diffusers folder is one line naming the file (and
the key), before anything is allocated; a noise level or step count beyond the model's is refused where the model is
opened; a runtime failure is one BackendError naming the model and the batch goes on; `-q` silences diffusers and
transformers. Every hostile file is the session's tiny fixtures (``sd_student_file``, ``pipeline_dir``) with one
value changed."""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

diffusers = pytest.importorskip("diffusers")  # the test extra installs it: this runs in CI
transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from tadsr.backends import model_info, open_model  # noqa: E402
from tadsr.cli import main  # noqa: E402
from tadsr.errors import BackendError, TadsrError  # noqa: E402
from tadsr.sd.diffusers_teacher import DiffusersBackend, DiffusersUpscaleTeacher  # noqa: E402
from tadsr.sd.student import SDStudent, load_sd_student  # noqa: E402

# --- helpers ---------------------------------------------------------------------------------------------------------


def _student(source: Path, tmp_path: Path, meta: Callable[[dict[str, str]], Any] | None = None,
             tensors: Callable[[dict[str, torch.Tensor]], Any] | None = None, name: str = "hostile") -> Path:
    """A copy of the student file ``source`` with its metadata and/or tensors changed in place by the callables."""
    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
    state = load_file(str(source))
    if meta is not None:
        meta(metadata)
    if tensors is not None:
        tensors(state)
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path), metadata)
    return path


def _config(key: str, **values: Any) -> Callable[[dict[str, str]], None]:
    """A metadata edit: ``values`` set in the JSON config under ``key``."""
    def edit(meta: dict[str, str]) -> None:
        meta[key] = json.dumps({**json.loads(meta[key]), **values})
    return edit


def _folder(source: Path, tmp_path: Path, part: str | None = None, edit: Callable[[Any], Any] | None = None) -> Path:
    """A copy of the pipeline folder ``source`` with the JSON file ``part`` changed by ``edit`` (in place, or a
    string it returns written as it is)."""
    folder = Path(shutil.copytree(source, tmp_path / "pipe"))
    if part is not None and edit is not None:
        path = folder / part
        data = json.loads(path.read_text())
        new = edit(data)
        path.write_text(new if isinstance(new, str) else json.dumps(data))
    return folder


def _one_line(err: BaseException, *needles: str) -> str:
    message = str(err)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _image(folder: Path, name: str = "lr.png", size: tuple[int, int] = (16, 16)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(folder / name)
    return folder / name


def _cli(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stderr.strip().splitlines()


# --- a damaged SD student file: metadata values, configs, tensors ----------------------------------------------------

def _pop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.update({key: value})


# (id, metadata edit, tensor edit, what the line says, found from the metadata alone: model_info says it too)
STUDENT_CASES = [
    ("timestep-beyond-schedule", _set("timestep", "5000"), None,
     "metadata timestep = 5000: not a timestep of its schedule (0 to 999", True),
    ("timestep-negative", _set("timestep", "-1"), None, "metadata timestep = '-1': not a non-negative integer", True),
    ("timestep-not-a-number", _set("timestep", "1e3"), None, "metadata timestep = '1e3'", True),
    ("noise-level-beyond-classes", _set("noise_level", "150"), None,
     "metadata noise_level 150 is out of this model's range 0 to 99 (the UNet's 100 noise-level classes)", True),
    ("noise-level-beyond-low-res-steps", _config("low_res_scheduler_config", num_train_timesteps=10), None,
     "metadata noise_level 20 is out of this model's range 0 to 9 (the low-res scheduler's 10 steps)", True),
    ("noise-level-beyond-max", _set("max_noise_level", "10"), None,
     "metadata noise_level 20 is out of this model's range 0 to 10 (max_noise_level 10)", True),
    ("max-noise-level-not-a-number", _set("max_noise_level", "ten"), None,
     "metadata max_noise_level = 'ten': not a non-negative integer", True),
    ("alphas-empty", _set("alphas_cumprod", "[]"), None, "metadata alphas_cumprod: not a JSON list", True),
    ("alphas-not-finite", _set("alphas_cumprod", "[0.5, NaN]"), None, "metadata alphas_cumprod: not a JSON list",
     True),
    ("alphas-above-one", _set("alphas_cumprod", "[1.5, 0.5]"), None, "in (0, 1]", True),
    ("alphas-zero", _set("alphas_cumprod", "[0.5, 0.0]"), None, "in (0, 1]", True),
    ("alphas-not-json", _set("alphas_cumprod", "[0.5,"), None, "metadata alphas_cumprod", True),
    ("prediction", _set("prediction", "sample"), None, "metadata prediction = 'sample': supported epsilon", True),
    ("low-res-scheduler-class", _set("low_res_scheduler", "LMSDiscreteScheduler"), None,
     "metadata low_res_scheduler = 'LMSDiscreteScheduler': supported", True),
    ("metadata-missing", _pop("timestep"), None, "metadata timestep missing", True),
    ("config-not-json", _set("unet_config", "{not json"), None, "metadata unet_config: not a JSON config", True),
    ("config-wrong-type", _config("unet_config", block_out_channels="32"), None,
     "metadata unet_config: block_out_channels = \"32\": not a list", True),
    ("config-negative", _config("vae_config", latent_channels=-4), None,
     "metadata vae_config: latent_channels = -4: a negative or oversized integer", True),
    ("config-not-rgb", _config("vae_config", in_channels=4), None, "in_channels = 4: tadsr's images are RGB", True),
    ("config-blocks-mismatch", _config("unet_config", up_block_types=["UpBlock2D"]), None,
     "up_block_types = [\"UpBlock2D\"]: not a list of 3 block names", True),
    ("scheduler-betas", _config("low_res_scheduler_config", beta_end=2.0), None,
     "metadata low_res_scheduler_config: beta_end = 2.0: not a number in (0, 1)", True),
    ("unet-shapes", _config("unet_config", block_out_channels=[32, 32, 1536]), None,
     "(unet.*): does not fit UNet2DConditionModel:", False),
    ("unet-construction", _config("unet_config", mid_block_type="Evil"), None,
     "(unet.*): UNet2DConditionModel cannot be built from this config (ValueError", False),
    ("tensor-missing", None, _pop("unet.conv_in.bias"), "1 missing key(s): conv_in.bias", False),
    ("tensor-unexpected", None, lambda t: t.update(extra=torch.zeros(2)), "unexpected tensor(s) extra", True),
    ("tensor-dtype", None, lambda t: t.update({"vae.encoder.conv_in.bias": t["vae.encoder.conv_in.bias"].int()}),
     "vae.encoder.conv_in.bias is I32", False),
    ("prompt-embeds-shape", None, lambda t: t.update(prompt_embeds=t["prompt_embeds"][..., :16].contiguous()),
     "prompt_embeds: shape [1, 16, 16]", True),
]


@pytest.mark.parametrize(("meta", "tensors", "needle", "static"), [c[1:] for c in STUDENT_CASES],
                         ids=[c[0] for c in STUDENT_CASES])
def test_a_damaged_sd_student_is_one_line_naming_the_file_and_key(sd_student_file: Path, tmp_path: Path,
                                                                  meta: Any, tensors: Any, needle: str,
                                                                  static: bool) -> None:
    path = _student(sd_student_file, tmp_path, meta, tensors)
    with pytest.raises(TadsrError) as err:
        open_model(path, device="cpu")
    _one_line(err.value, str(path), needle)
    if static:  # found from the metadata alone: `upscale --dry-run` and `serve`'s list say it too
        with pytest.raises(TadsrError) as again:
            model_info(path)
        assert str(again.value) == str(err.value)


def test_a_damaged_sd_student_stops_every_command_in_one_line(sd_student_file: Path, tmp_path: Path) -> None:
    """upscale, evaluate, bench: exit status 1 and one line, nothing written; serve refuses it at the start."""
    from tadsr.web.jobs import model_catalogue

    path = _student(sd_student_file, tmp_path, _set("timestep", "5000"))
    line = (f"tadsr: error: {path}: metadata timestep = 5000: not a timestep of its schedule (0 to 999, its "
            "alphas_cumprod)")
    lr = _image(tmp_path / "lr")
    code, lines = _cli("upscale", "-i", str(lr), "-o", str(tmp_path / "out"), "--model", str(path), "-q")
    assert (code, lines) == (1, [line]) and not (tmp_path / "out").exists()
    code, lines = _cli("upscale", "-i", str(lr), "-o", str(tmp_path / "out"), "--model", str(path), "--dry-run")
    assert (code, lines) == (1, [line])
    _image(tmp_path / "gt", size=(64, 64))
    code, lines = _cli("evaluate", "--lr", str(tmp_path / "lr"), "--gt", str(tmp_path / "gt"), "--models", str(path),
                       "-o", str(tmp_path / "report"), "-q")
    assert code == 1 and lines[-1] == line and not (tmp_path / "report" / "report.md").exists()
    code, lines = _cli("bench", "--models", str(path), "--sizes", "16", "--repeats", "1")
    assert code == 1 and lines[-1] == f"tadsr: error: --models {path}: {line.removeprefix('tadsr: error: ')}"
    with pytest.raises(TadsrError) as err:
        model_catalogue([path])
    assert f"tadsr: error: {err.value}" == line


# --- a damaged diffusers folder: every component's config, weights and the runtimes' own errors ---------------------

# (id, file changed, the change, the component or file named, what the line says, found without diffusers)
FOLDER_CASES = [
    ("unet-channels-vs-weights", "unet/config.json", _set("block_out_channels", [32, 32, 1536]), "unet",
     "does not fit UNet2DConditionModel: 164 shape mismatch(es): down_blocks.2", False),
    ("unet-wrong-type", "unet/config.json", _set("block_out_channels", "32, 32, 64"), "unet/config.json",
     "block_out_channels = \"32, 32, 64\": not a list of 1 to 6 integers", True),
    ("unet-negative-size", "unet/config.json", _set("block_out_channels", [-32, 32, 64]), "unet/config.json",
     "block_out_channels = [-32, 32, 64]: a negative or oversized integer", True),
    ("unet-float-size", "unet/config.json", _set("layers_per_block", 1.5), "unet/config.json",
     "layers_per_block = 1.5: not an integer from 1 to 16", True),
    ("unet-up-down-mismatch", "unet/config.json", _set("up_block_types", ["CrossAttnUpBlock2D", "UpBlock2D"]),
     "unet/config.json", "up_block_types = [\"CrossAttnUpBlock2D\", \"UpBlock2D\"]: not a list of 3 block names", True),
    ("unet-head-dims-per-level", "unet/config.json", _set("attention_head_dim", [8, 8]), "unet/config.json",
     "attention_head_dim = [8, 8]: not an integer from 1 to 65536 nor a list of 3 of them", True),
    ("unet-head-dim-vs-weights", "unet/config.json", _set("attention_head_dim", 7), "unet",
     "does not fit UNet2DConditionModel:", False),
    ("unet-missing-key", "unet/config.json", _pop("down_block_types"), "unet/config.json",
     "down_block_types missing: a list of 3 block names (one per entry of block_out_channels) is required", True),
    ("unet-groups", "unet/config.json", _set("norm_num_groups", 24), "unet/config.json",
     "32 channels are not a multiple of norm_num_groups 24", True),
    ("unet-not-finite", "unet/config.json", lambda c: json.dumps(c).replace('"norm_eps": 1e-05', '"norm_eps": NaN'),
     "unet/config.json", "norm_eps = NaN: not a finite number", True),
    ("unet-too-deep", "unet/config.json", _set("transformer_layers_per_block", 100000), "unet/config.json",
     "transformer_layers_per_block = 100000: not an integer from 1 to 16", True),
    ("unet-unknown-block", "unet/config.json",
     _set("down_block_types", ["Evil", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]), "unet",
     "UNet2DConditionModel cannot be built from this config (ValueError: Evil does not exist.)", False),
    ("unet-vs-vae", "unet/config.json", _set("in_channels", 8), "",
     "the UNet takes 8 channels; the VAE's latent (4) and the LR image (3) are 7", True),
    ("unet-not-an-object", "unet/config.json", lambda c: "[1, 2]", "unet/config.json", "a JSON list, not an object",
     True),
    ("vae-levels", "vae/config.json", _set("block_out_channels", [32] * 7), "vae/config.json",
     "not a list of 1 to 5 integers", True),
    ("vae-not-rgb", "vae/config.json", _set("out_channels", 4), "vae/config.json",
     "out_channels = 4: tadsr's images are RGB", True),
    ("vae-scaling", "vae/config.json", _set("scaling_factor", 0), "vae/config.json",
     "scaling_factor = 0: not a number in (0,", True),
    ("scheduler-steps", "scheduler/scheduler_config.json", _set("num_train_timesteps", 10**9),
     "scheduler/scheduler_config.json", "num_train_timesteps = 1000000000: not an integer from 1 to 100000", True),
    ("scheduler-betas", "scheduler/scheduler_config.json", _set("beta_end", 2.0), "scheduler/scheduler_config.json",
     "beta_end = 2.0: not a number in (0, 1)", True),
    ("scheduler-schedule", "scheduler/scheduler_config.json", _set("beta_schedule", "evil"), "scheduler",
     "DDIMScheduler cannot be built from this config (NotImplementedError", False),
    ("scheduler-prediction", "scheduler/scheduler_config.json", _set("prediction_type", "sample"),
     "scheduler/scheduler_config.json", "the scheduler's prediction type 'sample': supported epsilon", True),
    ("low-res-trained-betas", "low_res_scheduler/scheduler_config.json", _set("trained_betas", [0.1, 0.2]),
     "low_res_scheduler/scheduler_config.json", "trained_betas = [0.1, 0.2]: not a list of 1000 numbers", True),
    ("text-layers-type", "text_encoder/config.json", _set("num_hidden_layers", "2"), "text_encoder/config.json",
     "num_hidden_layers = \"2\": not an integer from 1 to 128", True),
    ("text-vs-weights", "text_encoder/config.json", _set("intermediate_size", 40), "text_encoder",
     "does not fit CLIPTextModel: 6 shape mismatch(es)", False),
    ("text-vs-unet", "text_encoder/config.json", _set("hidden_size", 64), "",
     "the prompt embedding is 64 wide; the UNet's cross_attention_dim is 32", True),
    ("tokenizer-length", "tokenizer/tokenizer_config.json", _set("model_max_length", 10**9), "tokenizer",
     "model_max_length 1000000000 is beyond the text encoder's 16 positions", False),
    ("index-max-noise-level", "model_index.json", _set("max_noise_level", -5), "model_index.json",
     "max_noise_level = -5: not an integer from 0", True),
]


@pytest.mark.parametrize(("part", "edit", "named", "needle", "static"), [c[1:] for c in FOLDER_CASES],
                         ids=[c[0] for c in FOLDER_CASES])
def test_a_damaged_diffusers_folder_is_one_line_naming_the_component(pipeline_dir: Path, tmp_path: Path, part: str,
                                                                     edit: Any, named: str, needle: str,
                                                                     static: bool) -> None:
    folder = _folder(pipeline_dir, tmp_path, part, edit)
    with pytest.raises(TadsrError) as err:
        open_model(folder, device="cpu")
    assert _one_line(err.value, needle).startswith(f"{folder / named if named else folder}: ")
    if static:  # found from the configs alone: `upscale --dry-run` says it too
        with pytest.raises(TadsrError) as again:
            model_info(folder)
        assert str(again.value) == str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "missing-tensor"])
def test_damaged_folder_weights_are_one_line(pipeline_dir: Path, tmp_path: Path, damage: str) -> None:
    folder = _folder(pipeline_dir, tmp_path)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
        needle = f"{weights}: not a readable safetensors file"
    else:
        state = load_file(str(weights))
        state.pop("decoder.conv_out.bias")
        save_file(state, str(weights))
        needle = f"{folder / 'vae'}: does not fit AutoencoderKL: 1 missing key(s): decoder.conv_out.bias"
    with pytest.raises(TadsrError) as err:
        DiffusersUpscaleTeacher.from_folder(folder)
    _one_line(err.value, needle)


def test_a_damaged_folder_stops_upscale_in_one_line(pipeline_dir: Path, tmp_path: Path) -> None:
    folder = _folder(pipeline_dir, tmp_path, "unet/config.json", _set("block_out_channels", [32, 32, 1536]))
    code, lines = _cli("upscale", "-i", str(_image(tmp_path / "lr")), "-o", str(tmp_path / "out"), "--model",
                       str(folder), "-q")
    assert code == 1 and len(lines) == 1 and not (tmp_path / "out").exists()
    assert lines[0].startswith(f"tadsr: error: {folder / 'unet'}: does not fit UNet2DConditionModel: ")


# --- bounded memory: a config asking for a huge network is refused before it is built ------------------------------

HUGE_UNET = {"block_out_channels": [2560, 5120, 10240], "layers_per_block": 2}


def _huge_bytes(config: dict[str, Any]) -> int:
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(config)
    return sum(p.numel() * p.element_size() for p in unet.parameters())


def _refused_quickly(call: Callable[[], Any], needle: str) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(TadsrError) as err:
        call()
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 1 << 20  # less than 1 GiB more, at most
    _one_line(err.value, needle)


def test_a_student_asking_for_a_huge_unet_is_refused_before_it_is_built(sd_student_file: Path,
                                                                        tmp_path: Path) -> None:
    path = _student(sd_student_file, tmp_path, _config("unet_config", **HUGE_UNET))
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["unet_config"])
    assert _huge_bytes(config) > 8 << 30 and path.stat().st_size < 10 << 20  # a 7 MiB file asking for > 8 GiB
    _refused_quickly(lambda: load_sd_student(path), f"{path} (unet.*): does not fit UNet2DConditionModel")


def test_a_folder_asking_for_a_huge_unet_is_refused_before_it_is_built(pipeline_dir: Path, tmp_path: Path) -> None:
    folder = _folder(pipeline_dir, tmp_path, "unet/config.json", lambda c: c.update(HUGE_UNET))
    assert _huge_bytes(json.loads((folder / "unet" / "config.json").read_text())) > 8 << 30
    _refused_quickly(lambda: DiffusersUpscaleTeacher.from_folder(folder),
                     f"{folder / 'unet'}: does not fit UNet2DConditionModel")


# --- the noise level and the steps: bounded by the folder, where it is opened --------------------------------------

@pytest.mark.parametrize(("part", "edit", "level", "needle"), [
    (None, None, 1000, "--noise-level 1000 is out of this model's range 0 to 99 (the UNet's 100 noise-level classes)"),
    ("model_index.json", _set("max_noise_level", 10), 20, "--noise-level 20 is out of this model's range 0 to 10 "
                                                          "(max_noise_level 10)"),
    ("low_res_scheduler/scheduler_config.json", _set("num_train_timesteps", 30), 50,
     "--noise-level 50 is out of this model's range 0 to 29 (the low-res scheduler's 30 steps)"),
    (None, None, -1, "--noise-level -1 is out of this model's range 0 to 99"),
], ids=["unet-classes", "max-noise-level", "low-res-steps", "negative"])
def test_a_noise_level_beyond_the_folder_is_one_line(pipeline_dir: Path, tmp_path: Path, part: str | None,
                                                     edit: Any, level: int, needle: str) -> None:
    folder = _folder(pipeline_dir, tmp_path, part, edit) if part else pipeline_dir
    with pytest.raises(TadsrError) as err:
        open_model(folder, device="cpu", noise_level=level)
    _one_line(err.value, f"{folder}: {needle}")


def test_noise_level_and_steps_beyond_the_folder_stop_upscale(pipeline_dir: Path, tmp_path: Path) -> None:
    lr = str(_image(tmp_path / "lr"))
    code, lines = _cli("upscale", "-i", lr, "-o", str(tmp_path / "out"), "--model", str(pipeline_dir),
                       "--noise-level", "1000", "-q")
    assert (code, lines) == (1, [f"tadsr: error: {pipeline_dir}: --noise-level 1000 is out of this model's range 0 "
                                 "to 99 (the UNet's 100 noise-level classes)"])
    code, lines = _cli("upscale", "-i", lr, "-o", str(tmp_path / "out"), "--model", str(pipeline_dir),
                       "--steps", "5000", "-q")
    assert (code, lines) == (1, [f"tadsr: error: {pipeline_dir}: --steps 5000: its scheduler runs 1 to 1000 steps"])
    assert not (tmp_path / "out").exists()


# --- settings a backend cannot honour: refused in one line by every command ----------------------------------------

@pytest.mark.parametrize("case", ["upscale-fp16-folder", "upscale-bf16-student", "upscale-prompt-student",
                                  "evaluate-bf16-student", "evaluate-fp16-folder"])
def test_a_setting_an_sd_model_cannot_honour_is_one_line(pipeline_dir: Path, sd_student_file: Path, tmp_path: Path,
                                                         case: str) -> None:
    command, setting, kind = case.split("-")
    model = str(pipeline_dir if kind == "folder" else sd_student_file)
    lr = _image(tmp_path / "lr")
    if command == "upscale":
        flags = {"fp16": ["--fp16"], "bf16": ["--bf16"], "prompt": ["--prompt", "a cat"]}[setting]
        code, lines = _cli("upscale", "-i", str(lr), "-o", str(tmp_path / "out"), "--model", model, "-q", *flags)
    else:
        _image(tmp_path / "gt", size=(64, 64))
        code, lines = _cli("evaluate", "--lr", str(tmp_path / "lr"), "--gt", str(tmp_path / "gt"), "--models", model,
                           "--dtype", setting, "-o", str(tmp_path / "out"), "-q")
    noun = "a diffusers pipeline" if kind == "folder" else "an SD student"
    what = {"prompt": "does not take prompt (got 'a cat')", "fp16": "runs in float32; it does not take dtype "
            "torch.float16", "bf16": "runs in float32; it does not take dtype torch.bfloat16"}[setting]
    assert (code, lines) == (1, [f"tadsr: error: {model}: {noun} {what}"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written


@pytest.mark.parametrize(("kind", "settings"), [
    ("student", {"dtype": torch.bfloat16}), ("student", {"steps": 2}), ("student", {"noise_level": 30}),
    ("folder", {"dtype": torch.float16}), ("folder", {"noise_level": 1000}), ("folder", {"steps": 5000}),
])
def test_check_settings_refuses_from_the_metadata_what_open_model_refuses(pipeline_dir: Path, sd_student_file: Path,
                                                                          kind: str, settings: dict[str, Any]) -> None:
    """``tadsr.backends.check_settings`` (for a dry run): the same line as ``open_model``, without the weights."""
    from tadsr.backends import check_settings

    model = pipeline_dir if kind == "folder" else sd_student_file
    with pytest.raises(TadsrError) as opened:
        open_model(model, device="cpu", **settings)
    with pytest.raises(TadsrError) as checked:
        check_settings(model, **settings)
    assert str(checked.value) == _one_line(opened.value, str(model))
    assert check_settings(model).scale == 4


# --- at run time: a failure inside diffusers is one BackendError naming the model; the batch goes on ---------------

def test_a_runtime_failure_is_a_backend_error_naming_the_model(sd_student_file: Path, pipeline_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    student = open_model(sd_student_file, device="cpu")
    lr, noise = torch.zeros(1, 3, 8, 8), student.draw_noise(8, 8, 0)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise IndexError("index out of range in self")

    monkeypatch.setattr(student.unet, "forward", broken)
    with pytest.raises(BackendError) as err:
        student.run(lr, noise)
    _one_line(err.value, f"{sd_student_file}: diffusers failed: IndexError: index out of range in self")
    monkeypatch.undo()
    with torch.no_grad():
        next(student.vae.decoder.conv_out.parameters()).fill_(float("nan"))  # damaged weights: NaN out
    with pytest.raises(BackendError) as err:
        student.run(lr, noise)
    _one_line(err.value, f"{sd_student_file}: the network returned non-finite values")

    backend = open_model(pipeline_dir, device="cpu", steps=1)
    assert isinstance(backend, DiffusersBackend)
    monkeypatch.setattr(backend.teacher.vae, "decode", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(BackendError) as err:
        backend.run(lr, backend.draw_noise(8, 8, 0))
    _one_line(err.value, f"{pipeline_dir}: diffusers failed: ValueError: bad")


def test_a_runtime_failure_fails_its_image_alone(sd_student_file: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One image whose run fails inside diffusers: one line naming it, the other image written, exit status 1."""
    real = SDStudent.upscale_latents

    def flaky(self: SDStudent, lr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if lr.shape[-1] == 24:
            raise IndexError("index 1000 is out of bounds for dimension 0 with size 1000")
        return real(self, lr, noise)

    monkeypatch.setattr(SDStudent, "upscale_latents", flaky)
    _image(tmp_path / "in", "a.png", (16, 16))
    _image(tmp_path / "in", "b.png", (24, 16))
    code, lines = _cli("upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model",
                       str(sd_student_file), "--tile", "0", "-q")
    assert code == 1 and len(lines) == 1, lines
    assert str(tmp_path / "in" / "b.png") in lines[0] and f"{sd_student_file}: diffusers failed: IndexError" in lines[0]
    assert (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "b.png").exists()


# --- quiet: no notice or progress bar of diffusers or transformers under -q, and only while it runs ----------------

def test_quiet_silences_diffusers_and_transformers_only_while_it_runs(pipeline_dir: Path, tmp_path: Path) -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = [(m.get_verbosity(), m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    lr = str(_image(tmp_path / "lr"))
    args = ["upscale", "-i", lr, "--model", str(pipeline_dir), "--steps", "1", "--prompt", "a cat", "--tile", "0"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "quiet"), "-q"])
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert [(m.get_verbosity(), m.is_progress_bar_enabled())
            for m in (diffusers_logging, transformers_logging)] == before
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "loud")])
    assert result.exit_code == 0 and "images" in result.stderr  # tadsr's own progress, without -q
