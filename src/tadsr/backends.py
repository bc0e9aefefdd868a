"""Opening a model for inference by what it is: ``open_model`` (a ``Backend`` to run) and ``model_info`` (what it
is and runs, from its metadata alone).

What a path is (a tadsr model file, an ONNX graph from ``tadsr export``, the SD student file of ``tadsr distill
--teacher DIFFUSERS_DIR``, a diffusers pipeline folder) is decided once, by ``tadsr.checkpoints.model_kind``; this
module is the one that acts on it for inference: ``tadsr upscale``, ``evaluate``, ``serve``, ``bench``, ``export``
and ``demo`` open their models here. It stands above ``tadsr.inference`` and the SD family (``tadsr.sd``), which
know nothing of each other: an SD backend has the ``Backend`` attributes without importing them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tadsr.checkpoints import ModelKind, model_kind
from tadsr.config import ModelConfig, Role
from tadsr.devices import resolve_device
from tadsr.diffusion.samplers import SamplerName
from tadsr.errors import ConfigError
from tadsr.inference.backend import Backend, ModelBackend
from tadsr.inference.onnx import OnnxModel
from tadsr.inference.pipeline import check_steps
from tadsr.model import EMBEDDED_NAMES, SRModel, load_model, read_model_config, resolve_model_path
from tadsr.sd.diffusers_teacher import (
    DEFAULT_NOISE_LEVEL,
    DEFAULT_STEPS,
    DiffusersBackend,
    DiffusersUpscaleTeacher,
    check_folder,
    check_noise_level,
    noise_level_range,
    pipeline_scale,
    quiet_runtimes,  # noqa: F401  (re-exported: the CLI silences the foreign runtimes through here)
    read_index,
)
from tadsr.sd.student import load_sd_student, sd_student_scale

NOUNS: dict[ModelKind, str] = {"tadsr": "a tadsr model", "onnx": "an exported ONNX graph",
                               "sd-student": "an SD student", "diffusers": "a diffusers pipeline",
                               "seesr": "a SeeSR model"}
DEFAULTS: dict[str, object] = {"sampler": "deterministic", "channels_last": False, "compile": False, "prompt": "",
                               "noise_level": DEFAULT_NOISE_LEVEL, "guidance": None, "negative_prompt": None,
                               "tags": None}  # a setting at its default is not asked for
TAKES: dict[ModelKind, tuple[str, ...]] = {"tadsr": ("sampler", "channels_last", "compile"), "onnx": (),
                                           "sd-student": (), "diffusers": ("prompt", "noise_level"),
                                           "seesr": ("prompt", "guidance", "negative_prompt", "tags")}
IGNORES: dict[ModelKind, dict[str, str]] = {"diffusers": {"sampler": "samples with its own scheduler"}}
OWN_PRECISION: tuple[ModelKind, ...] = ("tadsr", "seesr")  # the kinds that take a dtype (autocast)


@dataclass(frozen=True)
class ModelInfo:
    """What a model is and runs, from its metadata: its ``kind``; ``role`` (a student runs one step only);
    ``num_steps``, its schedule's T (1 for an exported graph or an SD student, one-step files; a pipeline's default
    steps), so that ``inference.pipeline.step_choices(role, num_steps)`` are the step counts it runs, its default
    first (a pipeline runs any); its ``scale``; ``path``, its file or folder (an embedded name's file)."""

    kind: ModelKind
    role: Role
    num_steps: int
    scale: int
    path: Path


def locate(path_or_name: str | os.PathLike | None) -> Path:
    """An embedded model's file (by name: "student", the default, or "teacher"), or the path as given."""
    if path_or_name is None or str(path_or_name) in EMBEDDED_NAMES:
        return resolve_model_path(path_or_name)
    return Path(path_or_name)


def model_info(path_or_name: str | os.PathLike | None = None) -> ModelInfo:
    """``ModelInfo`` of a path or embedded name, without loading weights (an ONNX file's session excepted: its
    metadata is read through it); one line for a path that is not a model."""
    path = locate(path_or_name)
    kind = model_kind(path)
    if kind == "tadsr":
        config = read_model_config(path)
        return ModelInfo(kind, config.role, config.schedule.num_steps, config.scale, path)
    if kind == "onnx":
        graph = OnnxModel(path)
        return ModelInfo(kind, graph.config.role, 1, graph.scale, path)  # one step, whatever the exported role
    if kind == "sd-student":
        return ModelInfo(kind, "student", 1, sd_student_scale(path), path)
    if kind == "diffusers":
        return ModelInfo(kind, "teacher", DEFAULT_STEPS, pipeline_scale(read_index(path)), path)
    if kind == "seesr":
        from tadsr.seesr.folder import read_settings
        from tadsr.seesr.pipeline import UPSCALE

        settings = read_settings(path)
        one_step = settings.variant == "tad-seesr"
        return ModelInfo(kind, "student" if one_step else "teacher", 1 if one_step else settings.steps, UPSCALE, path)
    raise ValueError(f"unknown model kind {kind!r}")


def _parameters(files: list[Path]) -> int:
    """The number of values the safetensors ``files`` hold, from their headers (no tensor read)."""
    from tadsr.checkpoints import read_shapes

    return sum(math.prod(shape) for file in files for shape in read_shapes(file).values())


def _config_summary(config: ModelConfig) -> list[str]:
    """A tadsr model config as ``tadsr info`` prints it: the config, parameter counts (built on the meta device)
    and the schedule."""
    from tadsr.config import config_to_json

    with torch.device("meta"):
        sr = SRModel(config)
    unet = sum(p.numel() for p in sr.unet.parameters())
    stage = sum(p.numel() for p in sr.first_stage.parameters())
    return [config_to_json(sr.config), f"unet parameters: {unet:,}", f"first-stage parameters: {stage:,}",
            f"schedule sqrt(eta): {[round(v, 4) for v in sr.schedule.sqrt_eta.tolist()]}"]


def model_summary(path_or_name: str | os.PathLike | None = None) -> list[str]:
    """What ``tadsr info`` prints of a model preset (``tadsr.presets.MODEL_PRESETS``) or a model of any kind,
    without loading its weights (safetensors headers and configs only): a preset's or a tadsr file's config,
    parameter counts and schedule; for the other kinds their kind, role, steps and scale (``model_info``), their
    run settings (a SeeSR folder's), and the parameters of each part (each folder's safetensors files, or an SD
    student file's prefixes). One line for a path that is no model."""
    from tadsr.presets import MODEL_PRESETS, model_config

    if str(path_or_name) in MODEL_PRESETS:
        return _config_summary(model_config(str(path_or_name)))
    path = locate(path_or_name)
    kind = model_kind(path)
    if kind == "tadsr":
        return _config_summary(read_model_config(path))
    info = model_info(path)
    lines = [f"kind: {kind}", f"role: {info.role}", f"steps: {info.num_steps}", f"scale: {info.scale}"]
    if kind == "seesr":
        from tadsr.seesr.folder import read_index

        index = read_index(path)
        lines += [f"{key}: {index[key]!r}" for key in ("variant", "prompt", "negative_prompt", "guidance",
                                                        "timestep", "process_size", "fp16") if key in index]
    if kind in ("seesr", "diffusers"):
        parts = sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("*.safetensors")))
        counts = {part.name: _parameters(sorted(part.glob("*.safetensors"))) for part in parts}
        lines += [f"{name} parameters: {count:,}" for name, count in counts.items()]
        lines.append(f"total parameters: {sum(counts.values()):,}")
    if kind == "sd-student":
        from tadsr.checkpoints import read_shapes

        counts: dict[str, int] = {}
        for key, shape in read_shapes(path).items():
            counts[key.split(".", 1)[0]] = counts.get(key.split(".", 1)[0], 0) + math.prod(shape)
        lines += [f"{name} values: {count:,}" for name, count in sorted(counts.items())]
    return lines


def open_model(path_or_name: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, steps: int | None = None, sampler: SamplerName = "deterministic",
               channels_last: bool = False, compile: bool = False, prompt: str = "",
               noise_level: int = DEFAULT_NOISE_LEVEL, guidance: float | None = None,
               negative_prompt: str | None = None, tags: str | None = None,
               report: Callable[[str], None] | None = None) -> Backend:
    """The ``Backend`` of a model path or embedded name ("student", the default, or "teacher"), by its kind
    (``tadsr.checkpoints.model_kind``):

    * a tadsr model file: ``ModelBackend`` (``steps``, ``sampler``, ``dtype``, ``channels_last``, ``compile``);
    * an ONNX file from ``tadsr export``: ``OnnxModel``, ONNX Runtime on the CPU whatever ``device``, one step, the
      file's own precision;
    * an SD student file: ``SDStudent``, one step, float32;
    * a diffusers folder (``StableDiffusionUpscalePipeline``): ``DiffusersBackend``, ``steps`` of its scheduler
      (default ``DEFAULT_STEPS``, at most its ``num_train_timesteps``), float32, the ``prompt`` embedded once, the LR
      noise ``noise_level`` (at most the folder's ``max_noise_level``, its low-res scheduler's last step and its
      UNet's last noise-level class);
    * a SeeSR model folder (``tadsr convert seesr``): ``tadsr.seesr.pipeline.SeeSRBackend``, its variant's sampler:
      TAD-SeeSR one step, SeeSR ``steps`` DDPM steps (default the folder's) with classifier-free ``guidance``
      against ``negative_prompt`` (defaults the folder's; TAD-SeeSR takes neither); ``prompt`` is added after
      DAPE's tags, ``tags`` replaces them ("" for none); ``dtype`` float16 / bfloat16 under autocast.

    An SD student or a diffusers folder is checked whole before it is allocated (``tadsr.sd.diffusers_teacher``):
    each config, each metadata value, each weight's shape against the file's header; one line naming the file (and
    the key) otherwise. ``quiet_runtimes`` silences diffusers' and transformers' notices and progress bars.

    ``device`` None is CUDA when available. ``steps`` must be one the model runs (``inference.pipeline.
    check_steps``: 1 for a student or a one-step file; T or 1 for a teacher; any for a pipeline). A setting other
    than its default that the model does not take is a ConfigError naming the setting and the model: ``prompt`` or
    ``noise_level`` but for a pipeline; ``sampler``, ``channels_last``, ``compile`` but for a tadsr model; a
    ``dtype`` other than float32 but for a tadsr model. The exception: a pipeline samples with its own scheduler, so
    a ``sampler`` there is said (``report``, by default a warning) and ignored. Weights are read only after every
    setting is checked.
    """
    path, name, kind = _checked(path_or_name, dtype, report, sampler=sampler, channels_last=channels_last,
                                compile=compile, prompt=prompt, noise_level=noise_level, guidance=guidance,
                                negative_prompt=negative_prompt, tags=tags)
    if kind == "tadsr":
        config = read_model_config(path)
        steps = check_steps(steps, config.role, config.schedule.num_steps, name)
        return ModelBackend(load_model(path), device=device, dtype=dtype, steps=steps, sampler=sampler,
                            channels_last=channels_last, compile=compile)
    if kind == "onnx":
        check_steps(steps, "student", 1, name)
        return OnnxModel(path)
    if kind == "sd-student":
        check_steps(steps, "student", 1, name)
        return load_sd_student(path, resolve_device(device))
    if kind == "diffusers":
        teacher = DiffusersUpscaleTeacher.from_folder(path, prompt=prompt, noise_level=noise_level,
                                                      device=resolve_device(device))
        return DiffusersBackend(teacher, steps)
    if kind == "seesr":
        from tadsr.seesr.folder import load_seesr, read_settings
        from tadsr.seesr.pipeline import SeeSRBackend

        _check_seesr_settings(read_settings(path), name, steps, guidance, negative_prompt)
        dev = resolve_device(device)
        return SeeSRBackend(load_seesr(path, dev), steps=steps, guidance=guidance, user_prompt=prompt,
                            negative_prompt=negative_prompt, tags=tags, device=dev, dtype=dtype, name=name)
    raise ValueError(f"unknown model kind {kind!r}")


def _check_seesr_settings(settings: Any, name: str, steps: int | None, guidance: float | None,
                          negative_prompt: str | None) -> None:
    """What a SeeSR folder's variant runs: TAD-SeeSR one step without guidance (so no ``guidance`` nor
    ``negative_prompt``), SeeSR any positive step count; ConfigError naming the setting otherwise."""
    if settings.variant == "tad-seesr":
        check_steps(steps, "student", 1, name)
        for setting, value in (("guidance", guidance), ("negative_prompt", negative_prompt)):
            if value is not None:
                raise ConfigError(f"{name}: TAD-SeeSR runs one step without classifier-free guidance; it does not "
                                  f"take {setting} (got {value!r})")
    elif steps is not None and not 1 <= steps <= 1000:
        raise ConfigError(f"{name}: --steps {steps}: SeeSR's DDPM scheduler runs 1 to 1000 steps")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ConfigError(f"{name}: guidance {guidance} is not a finite number >= 0")


def check_settings(path_or_name: str | os.PathLike | None = None, *, dtype: torch.dtype | None = None,
                   steps: int | None = None, sampler: SamplerName = "deterministic", channels_last: bool = False,
                   compile: bool = False, prompt: str = "", noise_level: int = DEFAULT_NOISE_LEVEL,
                   guidance: float | None = None, negative_prompt: str | None = None, tags: str | None = None,
                   report: Callable[[str], None] | None = None) -> ModelInfo:
    """What ``open_model`` would refuse of these settings, from the model's metadata alone (no weights, no
    diffusers: for ``tadsr upscale --dry-run``, or a command that opens its model later): the settings its kind
    does not take (``open_model``'s rule), a step count it does not run, a noise level or step count beyond a
    diffusers folder's. Returns its ``ModelInfo``; one line naming the setting and the model otherwise."""
    path, name, kind = _checked(path_or_name, dtype, report, sampler=sampler, channels_last=channels_last,
                                compile=compile, prompt=prompt, noise_level=noise_level, guidance=guidance,
                                negative_prompt=negative_prompt, tags=tags)
    info = model_info(path_or_name)
    if kind == "tadsr":
        check_steps(steps, info.role, info.num_steps, name)
    elif kind in ("onnx", "sd-student"):
        check_steps(steps, "student", 1, name)
    elif kind == "seesr":
        from tadsr.seesr.folder import read_settings

        _check_seesr_settings(read_settings(path), name, steps, guidance, negative_prompt)
    else:
        index = read_index(path)
        configs = check_folder(index)
        check_noise_level(noise_level, noise_level_range(configs.unet, configs.low_res_scheduler,
                                                         index.max_noise_level), str(index.folder))
        most = configs.scheduler.get("num_train_timesteps") or 1000
        if steps is not None and not 1 <= steps <= most:
            raise ConfigError(f"{index.folder}: --steps {steps}: its scheduler runs 1 to {most} steps")
    return info


def load_sr_model(path_or_name: str | os.PathLike | None, purpose: str) -> SRModel:
    """The ``SRModel`` of a tadsr model file or embedded name, for what needs the network itself (``purpose``, e.g.
    "tadsr export"); one line naming the path for another kind of model."""
    path = locate(path_or_name)
    kind = model_kind(path)
    if kind != "tadsr":
        raise ConfigError(f"{path}: {NOUNS[kind]}; {purpose} takes a tadsr model (a .safetensors file made by "
                          "`tadsr convert` or `tadsr distill`, or an embedded name: student, teacher)")
    return load_model(path)


def _checked(path_or_name: str | os.PathLike | None, dtype: torch.dtype | None,
             report: Callable[[str], None] | None, **settings: object) -> tuple[Path, str, ModelKind]:
    """(path, the name messages use, kind) of a model path or embedded name, its ``settings`` checked against its
    kind (``_check_settings``): what ``open_model`` and ``check_settings`` both do first."""
    path = locate(path_or_name)
    name = str(path_or_name if path_or_name is not None else "student")
    kind = model_kind(path)
    _check_settings(kind, name, dtype, settings, report)
    return path, name, kind


def _check_settings(kind: ModelKind, name: str, dtype: torch.dtype | None, settings: dict[str, object],
                    report: Callable[[str], None] | None) -> None:
    """``open_model``'s rule for the settings a kind of model does not take (its docstring)."""
    noun = NOUNS[kind]
    if kind not in OWN_PRECISION and dtype not in (None, torch.float32):
        raise ConfigError(f"{name}: {noun} runs in float32; it does not take dtype {dtype}")
    for setting, value in settings.items():
        if value == DEFAULTS[setting] or setting in TAKES[kind]:
            continue
        why = IGNORES.get(kind, {}).get(setting)
        if why is None:
            raise ConfigError(f"{name}: {noun} does not take {setting} (got {value!r})")
        line = f"{name}: {noun} {why}; {setting} {value!r} is ignored"
        if report is not None:
            report(line)
        else:
            warnings.warn(line, UserWarning, stacklevel=3)
