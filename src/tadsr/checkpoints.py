"""Loading official ResShift checkpoints, and our own safetensors model files.

Official files come in several forms (docs/implementation-notes.md §3.3): a bare state dict (autoencoders, EMA
checkpoints), a trainer checkpoint ``{'state_dict': ..., 'iters_start': ...}``, keys prefixed with ``module.``
(DDP) and/or containing ``_orig_mod.`` (``torch.compile``). All are read with ``torch.load(weights_only=True)``:
no code from a file is ever executed. Loading is strict: every parameter must be present with the right shape, and
no unknown key is accepted.
The derived buffers ``relative_position_index`` and ``attn_mask`` (recomputed by the network) are loaded when present
and may be absent, e.g. from our own exports, which drop them.

Our own format is one safetensors file: tensors under ``unet.`` and ``first_stage.`` and, in the metadata, the
``ModelConfig`` as JSON (see ``save_model`` / ``load_model``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from tadsr.errors import ConfigError, NotFoundError, TadsrError, first_line
from tadsr.fileio import atomic_write

DERIVED_BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")
FORMAT_NAME = "tadsr"
FORMAT_VERSION = "2"  # 2: ModelConfig.predict_residual (1: unet.residual_scale, migrated on load)
READABLE_FORMAT_VERSIONS = ("1", "2")
SD_STUDENT_FORMAT = "tadsr-sd-student"  # the one-step student of an SD-based teacher (tadsr.sd.student)
_MAX_LISTED = 8


class CheckpointError(TadsrError, ValueError):
    """A checkpoint file that cannot be read or does not fit the model; the message names the file."""


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the tensors of an official ``.pth`` / ``.ckpt`` or a ``.safetensors`` file, unwrapped and unprefixed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    return unwrap_state_dict(load_weights_only(path), path)


def load_weights_only(path: Path) -> object:
    """``torch.load(weights_only=True)`` of a file, memory-mapped where its format allows (a zip checkpoint: its
    tensors are read when used, so a large file does not need its size in RAM), on the CPU. A file that holds
    Python objects beyond tensors and plain containers is refused, never unpickled."""
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
        return torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(err))
        if found:  # torch's message goes on to advise weights_only=False: not ours to give
            raise CheckpointError(f"{path}: it holds a Python object ({found.group(1)}) besides tensors, which "
                                  "tadsr never unpickles (no code in a file is run); save its state dict or use "
                                  "safetensors") from None
        raise CheckpointError(f"{path}: not a readable weights-only PyTorch checkpoint (damaged, or not a "
                              "checkpoint)") from None
    except Exception as err:  # zip and format errors all mean "not a checkpoint we can read"
        raise CheckpointError(f"{path}: not a readable weights-only PyTorch checkpoint ({first_line(err)})") \
            from None


def unwrap_state_dict(obj: object, source: str | os.PathLike = "<checkpoint>") -> dict[str, Tensor]:
    """Take the state dict out of any official form and normalise its keys.

    Accepts a bare mapping of tensors or one nested under ``state_dict`` (trainer checkpoints), ``model`` or
    ``params_ema``; strips a leading ``module.`` (DDP) and every ``_orig_mod.`` (torch.compile).
    """
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "params_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: holds no state dict (found {type(obj).__name__})")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        key = key.replace("_orig_mod.", "")
        if key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def _is_derived(key: str) -> bool:
    return key.endswith(DERIVED_BUFFER_SUFFIXES)


def check_fits(module: nn.Module, shapes: Mapping[str, tuple[int, ...]], source: str | os.PathLike) -> None:
    """CheckpointError listing the missing, unexpected and mis-shaped keys of tensors of ``shapes`` for ``module``
    (which may live on the meta device: nothing is allocated)."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in own if k not in shapes and not _is_derived(k)]
    unexpected = [k for k in shapes if k not in own]
    mismatched = [f"{k} (file {tuple(shapes[k])} vs model {own[k]})" for k in own
                  if k in shapes and tuple(shapes[k]) != own[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"{source}: does not fit {type(module).__name__}: " + "; ".join(problems))


def load_state_dict_strict(module: nn.Module, state: Mapping[str, Tensor], source: str | os.PathLike) -> None:
    """Load ``state`` into ``module``; raise one CheckpointError listing missing, unexpected and mis-shaped keys."""
    check_fits(module, {k: tuple(v.shape) for k, v in state.items()}, source)
    module.load_state_dict({k: v for k, v in state.items()}, strict=False)


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file's header declares, without reading a tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(err)})") from err


def load_official(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an official ResShift / SinSR file (any form, see module docstring) strictly into a built module."""
    load_state_dict_strict(module, read_state_dict(path), path)
    return module


def atomic_save_file(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temporary file in the same folder and an atomic rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def export_tensors(module: nn.Module, prefix: str, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The module's state dict without derived buffers, under ``prefix``, floats cast to ``dtype`` if given."""
    out = {}
    for key, value in module.state_dict().items():
        if _is_derived(key):
            continue
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[prefix + key] = value.contiguous()
    return out


def is_sd_student(path: str | os.PathLike) -> bool:
    """A safetensors file whose metadata says ``SD_STUDENT_FORMAT`` (read without importing diffusers)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == SD_STUDENT_FORMAT
    except Exception:  # not safetensors: load_model says what it is
        return False


ModelKind = Literal["tadsr", "onnx", "sd-student", "diffusers", "seesr"]
SEESR_INDEX = "tadsr_seesr.json"  # what makes a folder a SeeSR model (``tadsr.seesr.parts``; `tadsr convert seesr`)


def model_kind(path: str | os.PathLike) -> ModelKind:
    """What a model path is — the one place that decides it (``tadsr.backends.open_model`` runs it,
    ``tadsr.training.families.open_teacher`` distils it): a folder with a ``model_index.json`` is a diffusers
    pipeline; a folder with a ``tadsr_seesr.json`` a SeeSR / TAD-SeeSR model from ``tadsr convert seesr``; a
    ``.onnx`` file a graph from ``tadsr export``; a safetensors file whose metadata says ``SD_STUDENT_FORMAT`` an
    SD student; any other file a tadsr model file (its loader names what is wrong with it). A missing path, or a
    folder with neither index, is one line naming it."""
    path = Path(path)
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "diffusers"
        if (path / SEESR_INDEX).is_file():
            return "seesr"
        raise ConfigError(f"{path}: not a model folder (no model_index.json, as a diffusers pipeline has, nor "
                          f"{SEESR_INDEX}, as `tadsr convert seesr` writes)")
    if not path.exists():
        raise NotFoundError(f"{path}: no such model file or folder")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    return "sd-student" if is_sd_student(path) else "tadsr"


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file; CheckpointError if it is not a tadsr model file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    hint = "tadsr models are .safetensors files made by `tadsr convert` (official .pth weights need converting)"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise CheckpointError(f"{path}: not a tadsr model file (unreadable as safetensors: {err}); {hint}") from err
    if meta.get("format") != FORMAT_NAME or "config" not in meta:
        raise CheckpointError(f"{path}: not a tadsr model file (no tadsr config in its metadata); {hint}")
    if meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise CheckpointError(f"{path}: tadsr format version {meta.get('format_version')!r} is not supported "
                              f"(this release reads {', '.join(READABLE_FORMAT_VERSIONS)})")
    return meta
