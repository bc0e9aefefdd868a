"""An SD-based super-resolution model in a diffusers folder, run as a teacher (paper Appendix B).

Supported first: the layout diffusers itself ships for Stable Diffusion x4 upscaler
(``StableDiffusionUpscalePipeline``):

* ``unet`` (``UNet2DConditionModel``) takes the latent and the LR image concatenated, (N, 4 + 3, h, w), the prompt
  embedding as cross-attention context and the LR image's noise level as ``class_labels``;
* ``low_res_scheduler`` (``DDPMScheduler``) noises the LR image to that level before it conditions the UNet;
* ``scheduler`` (its sampler: DDIM, DDPM, DPM-Solver++ or Euler) and the UNet's prediction type (``epsilon`` or
  ``v_prediction``; the released x4 upscaler is v-prediction);
* ``vae`` (``AutoencoderKL``) whose decoder turns the LR-sized latent into the x4 image
  (``latent / vae.config.scaling_factor``);
* ``text_encoder`` / ``tokenizer`` (CLIP, from transformers) only to embed the prompt, once.

The sampler (``sample``) is diffusers' own loop written out — the same random draws in the same order (the LR noise,
then the initial latent) and the scheduler's ``step`` — so that on the same weights, generator and scheduler it gives
the pipeline's output; ``tests/test_sd_teacher.py`` checks that on a tiny random pipeline. Classifier-free guidance is
not used (guidance scale 0, as TAD-SeeSR's inference).

Loading executes no code from the folder: only the classes named here are built, weights are read from
``.safetensors`` files only (local files only), and a folder that names another pipeline, a missing component, an
unsupported scheduler or prediction type is one ``ConfigError`` line naming the folder.

Nothing a file claims is trusted before it is checked (the checks below serve every SD-based backend: this folder,
the student file of ``tadsr.sd.student``, a future SeeSR): each component's config is type- and range-checked
(``check_unet_config``, ``check_vae_config``, ``check_scheduler_config``, ``check_text_config``) and against the
others (``check_pipeline``: channels, the noise level); each network is built on the meta device (no memory) and its
every parameter's shape compared with its weights' safetensors header (``fit_network``: one line listing the missing,
unexpected and mis-shaped keys) before a byte is allocated (``materialize``); any other error diffusers or
transformers raise while building or loading is one ``ConfigError`` naming the folder and the component, and while
running one ``BackendError`` naming the model (``foreign_runtime``). ``quiet_runtimes`` silences their notices and
progress bars (``tadsr upscale -q``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from tadsr.config_checks import is_int, is_number, shown
from tadsr.errors import BackendError, ConfigError, MissingExtraError, NotFoundError, TadsrError, first_line
from tadsr.sd.process import SDCondition, decode_latents, noised_condition, unet_multiple, vae_scale

PIPELINES = ("StableDiffusionUpscalePipeline",)
SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler")
PREDICTIONS = ("epsilon", "v_prediction")
REQUIRED = ("unet", "vae", "scheduler", "low_res_scheduler")
TEXT_CLASSES = {"tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "text_encoder": ("CLIPTextModel",)}
DEFAULT_STEPS = 20  # a pipeline's sampler steps in `tadsr upscale` when none are asked for
DEFAULT_NOISE_LEVEL = 20  # the LR image's noise level (the x4 upscaler's conditioning)
# The bounds of what a config may ask for, checked before anything is built (the x4 upscaler: a UNet of 4 levels,
# 2 layers each, 1024 channels at most; a VAE of 3 levels; a 1000-step schedule; a 23-layer text encoder of 77 tokens).
MAX_CONFIG_BYTES = 4 << 20  # a component's config.json
MAX_LEVELS = 6  # a UNet's resolution levels (len(block_out_channels))
MAX_VAE_LEVELS = 5  # a VAE's: 2 ** (levels - 1) is the scale, at most x16
MAX_LAYERS = 16  # layers or transformer layers per level (SD-XL has 10)
MAX_TEXT_LAYERS = 128
MAX_CHANNELS = 1 << 16
MAX_TIMESTEPS = 100_000
MAX_TOKENS = 4096  # a prompt embedding's length (CLIP: 77)
WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtypes a weight may have
FOREIGN = ("diffusers", "transformers", "huggingface_hub")  # the runtimes ``quiet_runtimes`` silences


def import_diffusers() -> Any:
    """The diffusers module, or a one-line MissingExtraError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise MissingExtraError("SD-based models need diffusers, an optional extra: pip install 'tadsr[sd]'") from None
    _silence_imported()
    return diffusers


# --- quiet: diffusers' and transformers' notices and progress bars ---------------------------------------------------

_quiet_depth = 0
_restore: list[Callable[[], None]] = []
_silenced: set[str] = set()


@contextmanager
def quiet_runtimes() -> Iterator[None]:
    """While inside: diffusers' and transformers' loggers say errors only, their progress bars are off and their
    Python warnings are ignored (those already imported now, the others once tadsr imports them); all restored on
    leaving, so that a run without ``-q`` keeps its notices, and tadsr's own progress bars are untouched."""
    global _quiet_depth
    _quiet_depth += 1
    try:
        with warnings.catch_warnings():
            for name in FOREIGN:
                warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
            _silence_imported()
            yield
    finally:
        _quiet_depth -= 1
        if _quiet_depth == 0:
            while _restore:
                _restore.pop()()
            _silenced.clear()


def _silence_imported() -> None:
    """Under ``quiet_runtimes``: silence each of diffusers and transformers that is imported and not yet silenced."""
    if not _quiet_depth:
        return
    for name in ("diffusers", "transformers"):
        if name in _silenced or sys.modules.get(name) is None:
            continue
        try:
            log = importlib.import_module(f"{name}.utils.logging")
            level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
            log.set_verbosity_error()
            log.disable_progress_bar()
        except Exception:  # another version's API: its notices are not worth an error
            continue
        _silenced.add(name)
        _restore.append(lambda log=log, level=level, bars=bars: (log.set_verbosity(level),
                                                                 log.enable_progress_bar() if bars else None))


@contextmanager
def foreign_runtime(name: str, runtime: str = "diffusers") -> Iterator[None]:
    """A network run in a foreign runtime: whatever it raises is one ``BackendError`` naming the model ``name``
    (a ``TadsrError`` passes as it is; CUDA out-of-memory too: the upscaler halves its tile on it)."""
    try:
        yield
    except (TadsrError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:
        raise BackendError(f"{name}: {runtime} failed: {type(err).__name__}: {first_line(err)}") from err


def check_output(name: str, out: Tensor) -> Tensor:
    """``out`` if every value is finite; a BackendError naming the model otherwise (damaged weights)."""
    if not bool(torch.isfinite(out).all()):
        raise BackendError(f"{name}: the network returned non-finite values (its weights are damaged)")
    return out


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a diffusers pipeline (a ``model_index.json``)."""
    return Path(path).is_dir() and (Path(path) / "model_index.json").is_file()


@dataclass(frozen=True)
class PipelineIndex:
    """What ``model_index.json`` says: the pipeline class, each component's (library, class) and the pipeline's
    ``max_noise_level`` (None if it records none)."""

    folder: Path
    pipeline: str
    components: dict[str, tuple[str, str]]
    max_noise_level: int | None = None


def read_index(folder: str | os.PathLike) -> PipelineIndex:
    """Check ``folder`` is a supported diffusers pipeline with every component it needs; one line otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such folder")
    index = folder / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    try:
        data = read_config(index)
    except ConfigError as err:
        raise ConfigError(f"{index}: not a diffusers model index ({str(err).removeprefix(f'{index}: ')})") from None
    pipeline = data.get("_class_name")
    if not isinstance(pipeline, str):
        raise ConfigError(f"{index}: not a diffusers model index (no _class_name)")
    if pipeline not in PIPELINES:
        raise ConfigError(f"{folder}: a {pipeline}; tadsr's diffusers backend runs {', '.join(PIPELINES)} folders")
    components = {k: tuple(v) for k, v in data.items()
                  if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None}
    for name in REQUIRED:
        if name not in components:
            raise ConfigError(f"{folder}: component {name!r} missing from model_index.json")
        if not (folder / name).is_dir():
            raise ConfigError(f"{folder}: component {name!r} missing (no {name}/ folder)")
    for name in ("unet", "vae"):
        if not any((folder / name).glob("*.safetensors")):
            raise ConfigError(f"{folder / name}: no .safetensors weights (tadsr reads no pickled weights)")
    for name in ("scheduler", "low_res_scheduler"):
        if components[name][1] not in SCHEDULERS:
            raise ConfigError(f"{folder}: {name} is a {components[name][1]}; supported: {', '.join(SCHEDULERS)}")
    max_noise_level = data.get("max_noise_level")
    if max_noise_level is not None and not (is_int(max_noise_level) and 0 <= max_noise_level <= MAX_TIMESTEPS):
        raise ConfigError(f"{index}: max_noise_level = {shown(max_noise_level)}: not an integer from 0 to "
                          f"{MAX_TIMESTEPS}")
    return PipelineIndex(folder, pipeline, components, max_noise_level)  # type: ignore[arg-type]


def pipeline_scale(index: PipelineIndex) -> int:
    """A checked folder's scale from its configs alone (``check_folder``: no weights read, no diffusers): as
    ``tadsr.sd.process.vae_scale``; one line if a config is damaged."""
    return 2 ** (len(check_folder(index).vae["block_out_channels"]) - 1)


# --- the configs: read bounded, type- and range-checked, checked against each other ---------------------------------

def read_config(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, a regular file of at most ``MAX_CONFIG_BYTES``; one line naming the file
    otherwise."""
    if not path.is_file():  # a device or a pipe would be read without end
        raise ConfigError(f"{path}: missing (the component's config)" if not path.exists() else
                          f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes, not a config (at most {MAX_CONFIG_BYTES})")
        with path.open("rb") as f:
            data = json.loads(f.read(MAX_CONFIG_BYTES + 1))
    except (OSError, ValueError, RecursionError) as err:
        raise ConfigError(f"{path}: not a readable JSON config ({type(err).__name__}: {first_line(err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a JSON {type(data).__name__}, not an object")
    return data


def parse_config(text: str, source: str) -> dict[str, Any]:
    """A JSON object from a string (a student file's metadata entry); one line naming ``source`` otherwise."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{source}: not a JSON config ({type(err).__name__}: {first_line(err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a JSON {type(data).__name__}, not an object")
    return data


_ABSENT = object()


class ConfigChecks:
    """Type and range checks of one config (a JSON object, ``source`` its file or key): each failure is one
    ConfigError ``SOURCE: KEY = VALUE: what is allowed``. A key that is absent or null takes the class's default
    (diffusers' and transformers' rule), unless it is ``required``."""

    def __init__(self, config: dict[str, Any], source: str) -> None:
        self.config, self.source = config, source

    def fail(self, key: str, what: str) -> NoReturn:
        value = self.config.get(key, _ABSENT)
        said = f"{key} missing" if value is _ABSENT or value is None else f"{key} = {shown(value)}"
        raise ConfigError(f"{self.source}: {said}: {what}")

    def _get(self, key: str, required: bool, what: str) -> Any:
        value = self.config.get(key)
        if value is None and required:
            self.fail(key, f"{what} is required")
        return value

    def integer(self, key: str, low: int, high: int, required: bool = False) -> int | None:
        what = f"an integer from {low} to {high}"
        value = self._get(key, required, what)
        if value is not None and not (is_int(value) and low <= value <= high):
            self.fail(key, f"not {what}")
        return value

    def number(self, key: str, low: float, high: float, required: bool = False, open_low: bool = False,
               open_high: bool = False) -> float | None:
        what = f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        value = self._get(key, required, what)
        if value is None:
            return None
        if not (is_number(value) and math.isfinite(value) and (low < value if open_low else low <= value)
                and (value < high if open_high else value <= high)):
            self.fail(key, f"not {what}")
        return float(value)

    def integers(self, key: str, shortest: int, longest: int, low: int, high: int) -> list[int]:
        """A required list of ``shortest`` to ``longest`` integers, each from ``low`` to ``high``."""
        what = f"a list of {shortest} to {longest} integers from {low} to {high}"
        value = self._get(key, True, what)
        if not (isinstance(value, list) and shortest <= len(value) <= longest
                and all(is_int(v) and low <= v <= high for v in value)):
            self.fail(key, f"not {what}")
        return value

    def names(self, key: str, count: int, of: str) -> list[str]:
        """A required list of ``count`` strings (one per entry of ``of``)."""
        what = f"a list of {count} block names (one per entry of {of})"
        value = self._get(key, True, what)
        if not (isinstance(value, list) and len(value) == count
                and all(isinstance(v, str) and 0 < len(v) <= 100 for v in value)):
            self.fail(key, f"not {what}")
        return value

    def per_level(self, key: str, count: int, low: int, high: int) -> list[int] | None:
        """An integer from ``low`` to ``high`` or a list of ``count`` of them (one per level), as a list."""
        value = self.config.get(key)
        if value is None:
            return None
        values = [value] * count if is_int(value) else value
        if not (isinstance(values, list) and len(values) == count
                and all(is_int(v) and low <= v <= high for v in values)):
            self.fail(key, f"not an integer from {low} to {high} nor a list of {count} of them (one per level)")
        return values

    def flags(self, key: str, count: int) -> None:
        """A boolean or a list of ``count`` of them."""
        value = self.config.get(key)
        if value is not None and not (isinstance(value, bool) or (
                isinstance(value, list) and len(value) == count and all(isinstance(v, bool) for v in value))):
            self.fail(key, f"not true, false or a list of {count} of them (one per level)")

    def finite_and_natural(self) -> None:
        """Every number anywhere in the config finite, every integer from 0 to 2^31 (networks' configs: none of
        their sizes, counts or ids is negative)."""
        def walk(key: str, value: Any, depth: int) -> None:
            if depth > 8:
                self.fail(key, "nested too deep")
            if isinstance(value, dict):
                for v in value.values():
                    walk(key, v, depth + 1)
            elif isinstance(value, list):
                for v in value:
                    walk(key, v, depth + 1)
            elif is_int(value) and not 0 <= value <= 2**31:
                self.fail(key, "a negative or oversized integer")
            elif isinstance(value, float) and not math.isfinite(value):
                self.fail(key, "not a finite number")

        for key, value in self.config.items():
            walk(key, value, 0)

    def channel_groups(self, channels: list[int]) -> None:
        groups = self.integer("norm_num_groups", 1, MAX_CHANNELS)
        for c in channels if groups else ():
            if c % groups:
                self.fail("block_out_channels", f"{c} channels are not a multiple of norm_num_groups {groups}")


def check_unet_config(config: dict[str, Any], source: str) -> None:
    """A ``UNet2DConditionModel`` config that builds a network of bounded size (counts bounded; the sizes are then
    checked against the weights' header by ``fit_network``); one line naming ``source`` and the key otherwise."""
    c = ConfigChecks(config, source)
    c.finite_and_natural()
    channels = c.integers("block_out_channels", 1, MAX_LEVELS, 1, MAX_CHANNELS)
    levels = len(channels)
    c.names("down_block_types", levels, "block_out_channels")
    c.names("up_block_types", levels, "block_out_channels")
    c.integer("in_channels", 1, 1024, required=True)
    c.integer("out_channels", 1, 1024, required=True)
    c.per_level("layers_per_block", levels, 1, MAX_LAYERS)
    for key in ("transformer_layers_per_block", "reverse_transformer_layers_per_block"):
        value = config.get(key)
        if value is None or (is_int(value) and 1 <= value <= MAX_LAYERS):
            continue
        if not (isinstance(value, list) and len(value) == levels and all(
                (is_int(v) and 1 <= v <= MAX_LAYERS) or (isinstance(v, list) and 0 < len(v) <= MAX_LAYERS and all(
                    is_int(u) and 1 <= u <= MAX_LAYERS for u in v)) for v in value)):
            c.fail(key, f"not an integer from 1 to {MAX_LAYERS} nor a list of {levels} of them (one per level)")
    for key in ("attention_head_dim", "num_attention_heads", "cross_attention_dim"):
        c.per_level(key, levels, 1, MAX_CHANNELS)
    c.flags("only_cross_attention", levels)
    c.integer("num_class_embeds", 1, 1_000_000)
    c.channel_groups(channels)
    for key in ("conv_in_kernel", "conv_out_kernel"):
        kernel = c.integer(key, 1, 31)
        if kernel is not None and kernel % 2 == 0:
            c.fail(key, "not an odd kernel size from 1 to 31")
    c.number("norm_eps", 0, 1, open_low=True)


def check_vae_config(config: dict[str, Any], source: str) -> None:
    """An ``AutoencoderKL`` config tadsr can run: RGB in and out, a latent of at most 64 channels, 1 to
    ``MAX_VAE_LEVELS`` levels (the scale, ``2 ** (levels - 1)``), a positive scaling factor."""
    c = ConfigChecks(config, source)
    c.finite_and_natural()
    channels = c.integers("block_out_channels", 1, MAX_VAE_LEVELS, 1, MAX_CHANNELS)
    c.names("down_block_types", len(channels), "block_out_channels")
    c.names("up_block_types", len(channels), "block_out_channels")
    for key in ("in_channels", "out_channels"):
        if c.integer(key, 1, 1024) not in (None, 3):
            c.fail(key, "tadsr's images are RGB: 3 channels")
    c.integer("latent_channels", 1, 64, required=True)
    c.integer("layers_per_block", 1, MAX_LAYERS)
    c.channel_groups(channels)
    c.number("scaling_factor", 0, 1e6, open_low=True)


def check_scheduler_config(config: dict[str, Any], source: str, sampler: bool) -> None:
    """A scheduler's config: ``num_train_timesteps`` from 1 to ``MAX_TIMESTEPS``, betas in (0, 1), and for the
    ``sampler`` (not the low-res noiser) a supported prediction type. The alphas it makes are checked once built
    (``build_scheduler``)."""
    c = ConfigChecks(config, source)
    steps = c.integer("num_train_timesteps", 1, MAX_TIMESTEPS) or 1000
    start = c.number("beta_start", 0, 1, open_low=True, open_high=True)
    end = c.number("beta_end", 0, 1, open_low=True, open_high=True)
    if start is not None and end is not None and start > end:
        c.fail("beta_start", f"larger than beta_end {end}")
    betas = config.get("trained_betas")
    if betas is not None and not (isinstance(betas, list) and len(betas) == steps and all(
            is_number(b) and 0 < b < 1 for b in betas)):
        c.fail("trained_betas", f"not a list of {steps} numbers in (0, 1) (one per num_train_timesteps)")
    c.integer("steps_offset", 0, steps - 1)
    prediction = config.get("prediction_type", "epsilon")
    if sampler and prediction not in PREDICTIONS:
        said = repr(prediction[:40]) if isinstance(prediction, str) else shown(prediction)
        raise ConfigError(f"{source}: the scheduler's prediction type {said}: supported "
                          f"{', '.join(PREDICTIONS)}")


def check_max_length(tokenizer: Any, text_config: dict[str, Any], source: str | os.PathLike) -> int:
    """The tokenizer's ``model_max_length`` (what prompts are padded to), checked to fit the text encoder's
    ``max_position_embeddings``: one line naming ``source`` otherwise (a tokenizer's default is 10^30)."""
    length, positions = tokenizer.model_max_length, text_config["max_position_embeddings"]
    if not (is_int(length) and 1 <= length <= positions):
        raise ConfigError(f"{source}: model_max_length {shown(length)} is beyond the text encoder's {positions} "
                          "positions")
    return length


def check_text_config(config: dict[str, Any], source: str) -> None:
    """A ``CLIPTextModel`` config of bounded size (the sizes then checked against the weights' header)."""
    c = ConfigChecks(config, source)
    c.finite_and_natural()
    hidden = c.integer("hidden_size", 1, MAX_CHANNELS, required=True)
    c.integer("intermediate_size", 1, 4 * MAX_CHANNELS, required=True)
    c.integer("num_hidden_layers", 1, MAX_TEXT_LAYERS, required=True)
    heads = c.integer("num_attention_heads", 1, MAX_CHANNELS, required=True)
    if hidden % heads:
        c.fail("num_attention_heads", f"does not divide hidden_size {hidden}")
    c.integer("vocab_size", 1, 1_000_000, required=True)
    c.integer("max_position_embeddings", 1, MAX_TOKENS, required=True)


def noise_level_range(unet: dict[str, Any], low_res_scheduler: dict[str, Any],
                      max_noise_level: int | None = None) -> tuple[int, str]:
    """The highest noise level a model takes, and why: its low-res scheduler's steps, the pipeline's
    ``max_noise_level`` (if recorded) and the UNet's noise-level classes (``num_class_embeds``), the least of them."""
    steps = low_res_scheduler.get("num_train_timesteps") or 1000
    bounds = [(steps - 1, f"the low-res scheduler's {steps} steps")]
    if max_noise_level is not None:
        bounds.append((max_noise_level, f"max_noise_level {max_noise_level}"))
    classes = unet.get("num_class_embeds")
    if classes and unet.get("class_embed_type") is None:
        bounds.append((classes - 1, f"the UNet's {classes} noise-level classes"))
    high = min(b for b, _ in bounds)
    return high, ", ".join(why for b, why in bounds if b == high)


def check_noise_level(level: Any, bound: tuple[int, str], source: str, setting: str = "--noise-level") -> int:
    """``level`` if an integer from 0 to the bound (``noise_level_range``); one line naming ``setting`` otherwise."""
    high, why = bound
    if not (is_int(level) and 0 <= level <= high):
        raise ConfigError(f"{source}: {setting} {shown(level)} is out of this model's range 0 to {high} ({why})")
    return level


def check_pipeline(unet: dict[str, Any], vae: dict[str, Any], source: str,
                   prompt_dim: int | None = None) -> None:
    """The checked UNet and VAE configs fit each other (the UNet takes the latent and the RGB LR image, gives a
    latent) and the prompt embedding's width ``prompt_dim`` (if known)."""
    latent = vae["latent_channels"]
    if unet["in_channels"] != latent + 3:
        raise ConfigError(f"{source}: the UNet takes {unet['in_channels']} channels; the VAE's latent ({latent}) and "
                          f"the LR image (3) are {latent + 3}")
    if unet["out_channels"] != latent:
        raise ConfigError(f"{source}: the UNet gives {unet['out_channels']} channels; the VAE's latent has {latent}")
    context = unet.get("cross_attention_dim")
    if prompt_dim is not None and is_int(context) and unet.get("encoder_hid_dim") is None and context != prompt_dim:
        raise ConfigError(f"{source}: the prompt embedding is {prompt_dim} wide; the UNet's cross_attention_dim is "
                          f"{context}")


@dataclass(frozen=True)
class FolderConfigs:
    """A folder's checked configs (``check_folder``); ``text`` None where it has no text encoder."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    low_res_scheduler: dict[str, Any]
    text: dict[str, Any] | None


def check_folder(index: PipelineIndex) -> FolderConfigs:
    """Every config of a checked folder (``read_index``) read bounded, type- and range-checked and checked against
    the others, without diffusers and without reading a weight; one line naming the file and the key otherwise."""
    folder = index.folder
    unet = read_config(folder / "unet" / "config.json")
    check_unet_config(unet, str(folder / "unet" / "config.json"))
    vae = read_config(folder / "vae" / "config.json")
    check_vae_config(vae, str(folder / "vae" / "config.json"))
    schedulers = {}
    for name in ("scheduler", "low_res_scheduler"):
        path = folder / name / "scheduler_config.json"
        schedulers[name] = read_config(path)
        check_scheduler_config(schedulers[name], str(path), sampler=name == "scheduler")
    text = None
    if "text_encoder" in index.components and (folder / "text_encoder" / "config.json").is_file():
        text = read_config(folder / "text_encoder" / "config.json")
        check_text_config(text, str(folder / "text_encoder" / "config.json"))
    check_pipeline(unet, vae, str(folder), text["hidden_size"] if text else None)
    return FolderConfigs(unet, vae, schedulers["scheduler"], schedulers["low_res_scheduler"], text)


# --- the networks: built on the meta device, checked against the weights' header, then allocated and loaded --------

@dataclass(frozen=True)
class TensorRef:
    """One tensor of a safetensors file, from its header: its file, key, shape and dtype (no data read)."""

    file: Path
    key: str
    shape: tuple[int, ...]
    dtype: str


def read_header(files: list[Path], source: str, prefix: str = "") -> dict[str, TensorRef]:
    """The tensors of safetensors ``files`` whose key starts with ``prefix``, by key without it, from their headers
    alone; one line naming the file if one is unreadable or two hold one key."""
    from safetensors import safe_open

    refs: dict[str, TensorRef] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if not key.startswith(prefix):
                        continue
                    part = f.get_slice(key)
                    name = key[len(prefix):]
                    if name in refs:
                        raise ConfigError(f"{file}: {key} is in {refs[name].file.name} too")
                    refs[name] = TensorRef(file, key, tuple(part.get_shape()), str(part.get_dtype()))
        except TadsrError:
            raise
        except Exception as err:  # safetensors raises its own error types
            raise ConfigError(f"{file}: not a readable safetensors file ({type(err).__name__}: "
                              f"{first_line(err)})") from None
    return refs


def weight_files(folder: Path, stem: str = "diffusion_pytorch_model") -> list[Path]:
    """The safetensors files a component's weights are in (``STEM.safetensors``, or the shards its
    ``STEM.safetensors.index.json`` names, plain names in the folder only); one line naming the folder otherwise."""
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if not index.is_file():
        raise ConfigError(f"{folder}: no {single.name} (tadsr reads no pickled weights)")
    shards = read_config(index).get("weight_map")
    if not (isinstance(shards, dict) and shards and all(
            isinstance(v, str) and re.fullmatch(r"[\w.-]+\.safetensors", v) for v in shards.values())):
        raise ConfigError(f"{index}: weight_map is not a map of tensors to .safetensors files in its folder")
    files = [folder / name for name in sorted(set(shards.values()))]
    for file in files:
        if not file.is_file():
            raise ConfigError(f"{index}: names {file.name}, which is missing")
    return files


def build_on_meta(cls: type, config: dict[str, Any], source: str) -> nn.Module:
    """``cls`` built from a checked ``config`` on the meta device (shapes, no memory); any error the class raises
    is one line naming ``source``."""
    try:
        with torch.device("meta"):
            return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    except Exception as err:
        raise ConfigError(f"{source}: {cls.__name__} cannot be built from this config ({type(err).__name__}: "
                          f"{first_line(err)})") from None


def _deprecated_attention_names(module: nn.Module) -> dict[str, str]:
    """diffusers' old attention names (``query``, ``key``, ``value``, ``proj_attn``) of the blocks it still loads
    them into, as (old key -> new key): what diffusers renames on load, so that older folders fit."""
    renames = {}
    for path, sub in module.named_modules():
        if getattr(sub, "_from_deprecated_attn_block", False):
            for old, new in (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")):
                for kind in ("weight", "bias"):
                    renames[f"{path}.{old}.{kind}"] = f"{path}.{new}.{kind}"
    return renames


def fit_network(module: nn.Module, refs: dict[str, TensorRef], source: str,
                tolerate: Callable[[str], bool] = lambda key: False) -> dict[str, TensorRef]:
    """The weights of a meta-device ``module`` (``build_on_meta``) by its state-dict key, once every parameter and
    buffer is in ``refs`` with its shape, a float dtype, and no other tensor is (``tolerate`` says which extra keys
    are harmless); one line listing the missing, unexpected and mis-shaped keys otherwise (nothing allocated)."""
    from tadsr.checkpoints import check_fits

    renames = _deprecated_attention_names(module)
    fitted = {renames.get(key, key): ref for key, ref in refs.items() if not tolerate(key)}
    check_fits(module, {key: ref.shape for key, ref in fitted.items()}, source)
    for ref in fitted.values():
        if ref.dtype not in WEIGHT_DTYPES:
            raise ConfigError(f"{source}: {ref.key} is {ref.dtype}; weights are {', '.join(WEIGHT_DTYPES)}")
    return fitted


def materialize(module: nn.Module, fitted: dict[str, TensorRef], device: str | torch.device,
                rebuild: Callable[[], nn.Module]) -> nn.Module:
    """A meta-device ``module`` allocated on ``device`` and loaded from its ``fitted`` weights, tensor by tensor
    (float32, eval mode). A module with buffers outside its state dict is built anew (``rebuild``) instead, so
    that they are computed, not left empty."""
    persistent = set(module.state_dict())
    if any(name not in persistent for name, _ in module.named_buffers()):
        with torch.device(device):
            module = rebuild()
    else:
        module = module.to_empty(device=device)
    from safetensors import safe_open

    state = module.state_dict()
    by_file: dict[Path, list[tuple[str, TensorRef]]] = {}
    for key, ref in fitted.items():
        by_file.setdefault(ref.file, []).append((key, ref))
    with torch.no_grad():
        for file, entries in by_file.items():
            with safe_open(str(file), framework="pt") as f:
                for key, ref in entries:
                    state[key].copy_(f.get_tensor(ref.key))
    return module.float().eval()


def open_network(cls: type, config: dict[str, Any], refs: dict[str, TensorRef], source: str,
                 device: str | torch.device, tolerate: Callable[[str], bool] = lambda key: False) -> nn.Module:
    """``build_on_meta``, ``fit_network`` and ``materialize`` in one: the network of a checked config and its
    weights' header, or one line naming ``source`` (any error while loading too)."""
    module = build_on_meta(cls, config, source)
    return _materialize(cls, config, module, fit_network(module, refs, source, tolerate), source, device)


def _materialize(network: type, config: dict[str, Any], module: nn.Module, fitted: dict[str, TensorRef], source: str,
                 device: str | torch.device) -> nn.Module:
    """``materialize`` with any error while loading one line naming ``source``."""
    try:
        return materialize(module, fitted, device, lambda: network.from_config(config))
    except TadsrError:
        raise
    except Exception as err:
        raise ConfigError(f"{source}: its weights cannot be loaded ({type(err).__name__}: {first_line(err)})") \
            from None


def check_prompt_embeds(shape: tuple[int, ...], unet: dict[str, Any], source: str) -> None:
    """A prompt embedding's shape: (1, L, D), L from 1 to ``MAX_TOKENS``, D the UNet's ``cross_attention_dim``."""
    context = unet.get("cross_attention_dim")
    if unet.get("encoder_hid_dim") is not None or not is_int(context):
        context = None  # projected or per level: the UNet's own check
    if not (len(shape) == 3 and shape[0] == 1 and 1 <= shape[1] <= MAX_TOKENS and shape[2] >= 1
            and context in (None, shape[2])):
        raise ConfigError(f"{source}: shape {list(shape)}; a prompt embedding is [1, 1 to {MAX_TOKENS} tokens, "
                          f"{context or 'the UNet cross_attention_dim'}]")


def build_scheduler(diffusers: Any, class_name: str, config: dict[str, Any], source: str) -> Any:
    """A scheduler of the allow-list from its checked config; its ``alphas_cumprod`` checked (every one finite, in
    (0, 1]); one line naming ``source`` otherwise."""
    if class_name not in SCHEDULERS:
        raise ConfigError(f"{source}: a {class_name}; supported: {', '.join(SCHEDULERS)}")
    try:
        scheduler = getattr(diffusers, class_name).from_config(config)
        alphas = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    except Exception as err:
        raise ConfigError(f"{source}: {class_name} cannot be built from this config ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    if alphas.dim() != 1 or not len(alphas) or not bool(((alphas > 0) & (alphas <= 1)).all()):
        raise ConfigError(f"{source}: its alphas_cumprod are not all in (0, 1] (beta_start, beta_end, beta_schedule "
                          "or trained_betas)")
    return scheduler


class DiffusersUpscaleTeacher:
    """A ``StableDiffusionUpscalePipeline`` folder as a teacher: ``sample`` (its multi-step sampler, on latents),
    ``decode`` (the VAE) and ``upscale`` (both), with the prompt embedded once (``prompt_embeds``, (1, L, D))."""

    def __init__(self, unet: Any, vae: Any, scheduler: Any, low_res_scheduler: Any, prompt_embeds: Tensor,
                 noise_level: int = DEFAULT_NOISE_LEVEL, *, name: str = "the pipeline",
                 max_noise_level: int | None = None, setting: str = "--noise-level") -> None:
        self.name = name  # what its errors name: the folder
        self.max_noise_level = max_noise_level  # the pipeline's, if its model_index.json records one
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTIONS:
            raise ConfigError(f"{name}: the scheduler's prediction type {self.prediction_type!r}: supported "
                              f"{', '.join(PREDICTIONS)}")
        bound = noise_level_range(dict(unet.config), dict(low_res_scheduler.config), max_noise_level)
        self.noise_level = check_noise_level(noise_level, bound, name, setting)
        self.unet, self.vae = unet.eval(), vae.eval()
        self.scheduler, self.low_res_scheduler = scheduler, low_res_scheduler
        self.prompt_embeds = prompt_embeds
        self.scale, self.lr_multiple = vae_scale(vae), unet_multiple(unet)
        self.latent_channels = int(vae.config.latent_channels)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, prompt: str = "", prompt_embeds: Tensor | None = None,
                    noise_level: int = DEFAULT_NOISE_LEVEL, device: str | torch.device = "cpu",
                    setting: str = "--noise-level") -> DiffusersUpscaleTeacher:
        """Load a checked folder (``read_index``, ``check_folder``): the noise level within the folder's
        (``noise_level_range``; ``setting`` is what a message calls it), each network built on the meta device and
        checked against its weights' header before it is allocated (``open_network``); any error of diffusers or
        transformers on the way is one line naming the folder and the component. The prompt is embedded with the
        folder's text encoder unless ``prompt_embeds`` (1, L, D) is given; a folder without one then needs it."""
        index = read_index(folder)
        configs = check_folder(index)
        name = str(index.folder)
        check_noise_level(noise_level, noise_level_range(configs.unet, configs.low_res_scheduler,
                                                         index.max_noise_level), name, setting)
        if prompt_embeds is not None:
            check_prompt_embeds(tuple(prompt_embeds.shape), configs.unet, f"{name}: the prompt embedding")
        diffusers = import_diffusers()
        schedulers = [build_scheduler(diffusers, index.components[part][1], getattr(configs, part),
                                      str(index.folder / part)) for part in ("scheduler", "low_res_scheduler")]
        planned = []
        for part, network in (("unet", diffusers.UNet2DConditionModel), ("vae", diffusers.AutoencoderKL)):
            source = str(index.folder / part)
            config = getattr(configs, part)
            module = build_on_meta(network, config, source)
            fitted = fit_network(module, read_header(weight_files(index.folder / part), source), source)
            planned.append((network, config, module, fitted, source))
        if prompt_embeds is None:
            prompt_embeds = embed_prompt(index, prompt, configs.text)
            check_prompt_embeds(tuple(prompt_embeds.shape), configs.unet, f"{name}: the prompt embedding")
        unet, vae = (_materialize(network, config, module, fitted, source, device)
                     for network, config, module, fitted, source in planned)
        return cls(unet, vae, *schedulers, prompt_embeds.float().to(device), noise_level, name=name,
                   max_noise_level=index.max_noise_level, setting=setting)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def condition(self, lr: Tensor, generator: torch.Generator | None = None,
                  lr_noise: Tensor | None = None) -> SDCondition:
        """The UNet's conditioning for (N, 3, h, w) LR images in [-1, 1]: the LR image noised to ``noise_level`` by
        the low-res scheduler (``lr_noise``, else drawn from ``generator``), the level, the prompt embedding."""
        if lr_noise is None:
            randn = import_diffusers().utils.torch_utils.randn_tensor
            lr_noise = randn(lr.shape, generator=generator, device=self.device, dtype=self.prompt_embeds.dtype)
        return noised_condition(self.low_res_scheduler, lr, lr_noise, self.noise_level, self.prompt_embeds)

    @torch.no_grad()
    def sample(self, lr: Tensor, steps: int, generator: torch.Generator | None = None,
               progress: Callable[[int, int], None] | None = None, cond: SDCondition | None = None,
               latents: Tensor | None = None) -> Tensor:
        """The multi-step sampler from pure noise: (N, 3, h, w) LR in [-1, 1] -> (N, 4, h, w) latents.

        Draws from ``generator`` in the pipeline's order: the LR image's noise (unless ``cond`` is given), then the
        initial latent (unless ``latents``, the noise z_T, is given: distillation's shared z_T)."""
        randn = import_diffusers().utils.torch_utils.randn_tensor
        device, n = self.device, lr.shape[0]
        self.scheduler.set_timesteps(steps, device=device)
        cond = cond if cond is not None else self.condition(lr, generator)
        if latents is None:
            latents = randn((n, self.latent_channels, *lr.shape[2:]), generator=generator, device=device,
                            dtype=self.prompt_embeds.dtype)
        latents = latents.to(device, self.prompt_embeds.dtype) * self.scheduler.init_noise_sigma
        extra = _step_kwargs(self.scheduler, generator)
        for i, t in enumerate(self.scheduler.timesteps):
            x = torch.cat([self.scheduler.scale_model_input(latents, t), cond.image], dim=1)
            out = self.unet(x, t, encoder_hidden_states=cond.context, class_labels=cond.level, return_dict=False)[0]
            latents = self.scheduler.step(out, t, latents, **extra, return_dict=False)[0]
            if progress:
                progress(i + 1, len(self.scheduler.timesteps))
        return latents

    @torch.no_grad()
    def encode(self, image: Tensor) -> Tensor:
        """(N, 3, H, W) image in [-1, 1] -> (N, 4, H / s, W / s) latents (the VAE posterior's mean, scaled)."""
        return self.vae.encode(image.to(self.device)).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """(N, 4, h, w) latents -> (N, 3, h s, w s) image in [-1, 1] (clamped)."""
        return decode_latents(self.vae, latents)

    def upscale(self, lr: Tensor, steps: int, seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> Tensor:
        """(N, 3, h, w) LR in [-1, 1] -> (N, 3, h s, w s) in [-1, 1]: ``steps`` sampler steps from ``seed``."""
        generator = torch.Generator(self.device).manual_seed(seed)
        with foreign_runtime(self.name):
            return check_output(self.name, self.decode(self.sample(lr, steps, generator, progress)))


def _step_kwargs(scheduler: Any, generator: torch.Generator | None) -> dict[str, Any]:
    """The extra arguments a scheduler's ``step`` takes, as the pipelines pass them (eta 0, the generator)."""
    import inspect

    params = set(inspect.signature(scheduler.step).parameters)
    return {k: v for k, v in (("eta", 0.0), ("generator", generator)) if k in params}


def embed_prompt(index: PipelineIndex, prompt: str, text_config: dict[str, Any] | None = None) -> Tensor:
    """The prompt's (1, L, D) embedding by the folder's CLIP text encoder (the last hidden state, as the
    pipeline's ``encode_prompt`` without clip skip); one line when the folder or transformers lacks it. The text
    encoder's config (``text_config`` if already checked) and its weights' header are checked as the UNet's are
    before it is loaded, and the tokenizer's length against its positions; any error of transformers is one line
    naming the component."""
    for name in ("text_encoder", "tokenizer"):
        if name not in index.components or not (index.folder / name).is_dir():
            raise ConfigError(f"{index.folder}: no {name} to embed the prompt (pass the prompt's embedding instead)")
        if index.components[name][1] not in TEXT_CLASSES[name]:
            raise ConfigError(f"{index.folder}: {name} is a {index.components[name][1]}; supported: "
                              f"{', '.join(TEXT_CLASSES[name])}")
    try:
        import transformers
    except ImportError:
        raise MissingExtraError(f"{index.folder}: its text encoder needs transformers: pip install 'tadsr[sd]'") \
            from None
    _silence_imported()
    folder, source = index.folder / "text_encoder", str(index.folder / "text_encoder")
    if text_config is None:
        text_config = read_config(folder / "config.json")
        check_text_config(text_config, str(folder / "config.json"))
    encoder_class = getattr(transformers, index.components["text_encoder"][1])
    try:
        config = transformers.CLIPTextConfig.from_dict(text_config)
    except Exception as err:
        raise ConfigError(f"{source}: not a CLIP text config ({type(err).__name__}: {first_line(err)})") from None
    meta = build_on_meta(encoder_class, config, source)
    refs = read_header(weight_files(folder, "model"), source)
    aliases = {}  # transformers' key layouts differ by version: with or without the "text_model." prefix
    for key in meta.state_dict():
        found = [k for k in (key, f"text_model.{key}", key.removeprefix("text_model.")) if k in refs]
        if found:
            aliases[key] = refs[found[0]]
    fit_network(meta, aliases, source)
    del meta
    for file in (index.folder / "tokenizer").iterdir():  # the tokenizer's files are read whole
        if not file.is_dir() and (not file.is_file() or file.stat().st_size > MAX_CONFIG_BYTES * 16):
            raise ConfigError(f"{file}: not a regular file of at most {MAX_CONFIG_BYTES * 16} bytes (a tokenizer's "
                              "vocabulary is a few MiB)")
    try:
        tokenizer = getattr(transformers, index.components["tokenizer"][1]).from_pretrained(
            index.folder, subfolder="tokenizer", local_files_only=True)
    except Exception as err:
        raise ConfigError(f"{index.folder / 'tokenizer'}: cannot be loaded ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    length = check_max_length(tokenizer, text_config, index.folder / "tokenizer")
    try:
        encoder, info = encoder_class.from_pretrained(index.folder, subfolder="text_encoder", use_safetensors=True,
                                                      local_files_only=True, output_loading_info=True)
    except Exception as err:
        raise ConfigError(f"{source}: its weights cannot be loaded ({type(err).__name__}: {first_line(err)})") \
            from None
    wrong = sorted(map(str, [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]))
    if wrong:
        raise ConfigError(f"{source}: weights missing or mis-shaped: {', '.join(wrong[:8])}")
    encoder = encoder.float().eval()
    try:
        ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < text_config["vocab_size"]:
            raise ConfigError(f"{index.folder / 'tokenizer'}: gives token ids beyond the text encoder's vocab_size "
                              f"{text_config['vocab_size']}")
        with torch.no_grad():
            return encoder(ids)[0].float()
    except TadsrError:
        raise
    except Exception as err:
        raise ConfigError(f"{source}: cannot embed the prompt ({type(err).__name__}: {first_line(err)})") from None


class DiffusersBackend:
    """A diffusers teacher as a ``Backend`` (``tadsr.inference.backend``, structurally): ``steps`` sampler steps
    of its own scheduler, float32, on the teacher's device.

    Its noise for an image (``draw_noise``) is the pipeline's own two draws from ``seed``, in the pipeline's order
    (the LR image's noise, then the initial latent), so that a whole image (``tile`` 0) is diffusers' picture for
    that seed; tiled, each tile samples from its slice of those draws and the overlaps are blended, as ``tadsr
    upscale`` tiles any model. A scheduler whose steps draw noise (DDPM, Euler ancestral) draws it from the same
    generator, continued after those two draws, tile after tile: as the pipeline does for a whole image, and the
    same bits for the same seed and tiling."""

    noise_factor = 1  # both draws are at the LR size

    def __init__(self, teacher: DiffusersUpscaleTeacher, steps: int | None = None) -> None:
        most = teacher.num_train_timesteps
        if steps is not None and not 1 <= steps <= most:
            raise ConfigError(f"{teacher.name}: --steps {steps}: its scheduler runs 1 to {most} steps")
        self.teacher, self.steps = teacher, min(steps or DEFAULT_STEPS, most)
        self.generator: torch.Generator | None = None  # the last ``draw_noise``'s, continued by the steps' draws

    @property
    def scale(self) -> int:
        return self.teacher.scale

    @property
    def size_multiple(self) -> int:
        return self.teacher.lr_multiple

    @property
    def device(self) -> torch.device:
        return self.teacher.device

    def draw_noise(self, height: int, width: int, seed: int) -> Tensor:
        """(1, 1, latent_channels + 3, h, w): the initial latent's channels, then the LR image's noise; drawn from
        ``torch.Generator(device).manual_seed(seed)`` LR noise first, as ``DiffusersUpscaleTeacher.sample`` draws."""
        randn = import_diffusers().utils.torch_utils.randn_tensor
        generator = torch.Generator(self.device).manual_seed(seed)
        draw = dict(generator=generator, device=self.device, dtype=self.teacher.prompt_embeds.dtype)
        lr_noise = randn((1, 3, height, width), **draw)
        latents = randn((1, self.teacher.latent_channels, height, width), **draw)
        self.generator = generator
        return torch.cat([latents, lr_noise], dim=1)[None]

    def run(self, lr: Tensor, noise: Tensor) -> Tensor:
        """LR tiles (N, 3, h, w) and their noise slices (1, N, latent_channels + 3, h, w) -> HR tiles in [-1, 1]:
        conditioned on the LR slice's noise, sampled from the latent slice, decoded."""
        channels = self.teacher.latent_channels
        with foreign_runtime(self.teacher.name):
            cond = self.teacher.condition(lr, lr_noise=noise[0, :, channels:])
            out = self.teacher.decode(self.teacher.sample(lr, self.steps, self.generator, cond=cond,
                                                          latents=noise[0, :, :channels]))
        return check_output(self.teacher.name, out)
