"""Reading a SeeSR / TAD-SeeSR folder that ``tadsr convert seesr`` wrote (the layout of ``tadsr.seesr.parts``).

Nothing but safetensors, JSON and text is read, and nothing from the folder is run: every config is type- and
range-checked and its class taken from an allow-list (the checks of ``tadsr.sd.diffusers_teacher``), every network
built on the meta device and compared with its weights' safetensors header before memory is allocated, then loaded
strictly, in float32 (a folder converted with ``--fp16`` is upcast), in eval mode. Every problem is one line
(``ConfigError`` / ``CheckpointError``) naming the file and the key.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from tadsr.checkpoints import CheckpointError
from tadsr.config_checks import is_int, shown
from tadsr.errors import ConfigError, NotFoundError, TadsrError, first_line
from tadsr.sd.diffusers_teacher import (
    MAX_CONFIG_BYTES,
    build_on_meta,
    build_scheduler,
    check_max_length,
    check_scheduler_config,
    check_text_config,
    check_vae_config,
    fit_network,
    import_diffusers,
    materialize,
    open_network,
    read_config,
    read_header,
)
from tadsr.seesr.dape import DapeImageEncoder, SwinConfig
from tadsr.seesr.parts import FORMAT, FORMAT_VERSION, INDEX, PROCESS_SIZE, VARIANTS, SeeSRParts, SeeSRSettings
from tadsr.seesr.tags import Dape, TagHead, TagHeadConfig, read_tag_list, read_thresholds

MAX_PROMPT_CHARS = 4096
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
MAX_TIMESTEP = 99_999
MAX_PROCESS_SIZE = 1 << 16
MAX_SIZE = 1 << 20  # any one size or count of DAPE's config
MAX_STAGES = 16
SHA256_HEX = 64
# A CLIP tokenizer's files: the hub's SD-2-base has vocab.json + merges.txt, transformers 5 saves tokenizer.json
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
MAX_TOKENIZER_BYTES = MAX_CONFIG_BYTES * 16  # as tadsr.sd.diffusers_teacher.embed_prompt: a vocabulary is a few MiB


def _fail(source: Path | str, key: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"{source}: {key} = {shown(value)}: {what}")


# --- tadsr_seesr.json ---------------------------------------------------------------------------------------------

def read_index(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder/tadsr_seesr.json`` as a checked dict (format, version, settings, sources); one line otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such folder (a SeeSR model folder from `tadsr convert seesr`)")
    path = folder / INDEX
    if not path.exists():
        raise ConfigError(f"{folder}: not a SeeSR model folder (no {INDEX}; `tadsr convert seesr` writes one)")
    data = read_config(path)
    if data.get("format") != FORMAT:
        raise _fail(path, "format", data.get("format"), f"not {FORMAT!r}")
    version = data.get("format_version")
    if not is_int(version) or version != FORMAT_VERSION:
        raise _fail(path, "format_version", version, f"this tadsr reads version {FORMAT_VERSION}")
    sources = data.get("sources", {})
    if not (isinstance(sources, dict) and all(
            isinstance(k, str) and isinstance(v, str) and len(v) == SHA256_HEX
            and all(c in "0123456789abcdef" for c in v) for k, v in sources.items())):
        raise _fail(path, "sources", sources, "not a map of input files to their SHA-256 (64 hex digits)")
    for key in ("tadsr_version",):
        if key in data and not isinstance(data[key], str):
            raise _fail(path, key, data[key], "not a string")
    if "fp16" in data and not isinstance(data["fp16"], bool):
        raise _fail(path, "fp16", data["fp16"], "not true or false")
    return data


def read_settings(folder: str | os.PathLike) -> SeeSRSettings:
    """The run settings of ``folder/tadsr_seesr.json`` (``SeeSRSettings``), each value type- and range-checked;
    one line naming the file and the key otherwise."""
    data = read_index(folder)
    path = Path(folder) / INDEX
    variant = data.get("variant")
    if variant not in VARIANTS:
        raise _fail(path, "variant", variant, f"not one of {', '.join(VARIANTS)}")
    for key in ("prompt", "negative_prompt"):
        value = data.get(key)
        if not (isinstance(value, str) and len(value) <= MAX_PROMPT_CHARS):
            raise _fail(path, key, value, f"not a text of at most {MAX_PROMPT_CHARS} characters")
    steps = data.get("steps")
    if not (is_int(steps) and 1 <= steps <= MAX_STEPS):
        raise _fail(path, "steps", steps, f"not an integer from 1 to {MAX_STEPS}")
    guidance = data.get("guidance")
    if not (isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and math.isfinite(guidance)
            and 0 <= guidance <= MAX_GUIDANCE):
        raise _fail(path, "guidance", guidance, f"not a number from 0 to {MAX_GUIDANCE}")
    timestep = data.get("timestep")
    if not (is_int(timestep) and 0 <= timestep <= MAX_TIMESTEP):
        raise _fail(path, "timestep", timestep, f"not an integer from 0 to {MAX_TIMESTEP}")
    process_size = data.get("process_size", PROCESS_SIZE)  # absent in older folders: the official 512
    if not (is_int(process_size) and 0 <= process_size <= MAX_PROCESS_SIZE):
        raise _fail(path, "process_size", process_size, f"not an integer from 0 to {MAX_PROCESS_SIZE}")
    return SeeSRSettings(variant=variant, prompt=data["prompt"], negative_prompt=data["negative_prompt"],
                         steps=steps, guidance=float(guidance), timestep=timestep, process_size=process_size)


# --- dape/ ----------------------------------------------------------------------------------------------------------

def _config_fields(cls: type, values: Any, source: Path, key: str) -> dict[str, Any]:
    """A dataclass config's fields from JSON, each of its default's type (lists for tuples) and bounded."""
    if not isinstance(values, dict):
        raise _fail(source, key, values, "not an object")
    names = {f.name: f for f in fields(cls)}
    extra = sorted(set(values) - set(names))
    if extra:
        raise _fail(source, f"{key}.{extra[0]}", values[extra[0]], f"not a field of {cls.__name__}")
    out: dict[str, Any] = {}
    for name, spec in names.items():
        if name not in values:
            raise ConfigError(f"{source}: {key}.{name} missing")
        value, default = values[name], spec.default
        where = f"{key}.{name}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise _fail(source, where, value, "not true or false")
        elif isinstance(default, int):
            if not (is_int(value) and 0 < value <= MAX_SIZE):
                raise _fail(source, where, value, f"not an integer from 1 to {MAX_SIZE}")
        elif isinstance(default, float):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and abs(value) <= MAX_SIZE):
                raise _fail(source, where, value, "not a finite number")
            value = float(value)
        elif isinstance(default, tuple):
            kind = bool if isinstance(default[0], bool) else int
            if not (isinstance(value, list) and 0 < len(value) <= MAX_STAGES and all(
                    isinstance(v, bool) if kind is bool else (is_int(v) and 0 < v <= MAX_SIZE) for v in value)):
                raise _fail(source, where, value, f"not a list of 1 to {MAX_STAGES} "
                            + ("booleans" if kind is bool else f"integers from 1 to {MAX_SIZE}"))
            value = tuple(value)
        out[name] = value
    return out


def read_dape_config(folder: Path) -> tuple[SwinConfig, TagHeadConfig, bool]:
    """``dape/config.json``: the Swin's and the tag head's sizes and the input's antialiasing, checked."""
    path = folder / "config.json"
    data = read_config(path)
    extra = sorted(set(data) - {"swin", "tag_head", "antialias"})
    if extra:
        raise _fail(path, extra[0], data[extra[0]], "not a key of DAPE's config (swin, tag_head, antialias)")
    antialias = data.get("antialias", False)
    if not isinstance(antialias, bool):
        raise _fail(path, "antialias", antialias, "not true or false")
    swin = _config_fields(SwinConfig, data.get("swin"), path, "swin")
    head = _config_fields(TagHeadConfig, data.get("tag_head"), path, "tag_head")
    if sum(swin["depths"]) > 4 * MAX_STAGES * MAX_STAGES:
        raise _fail(path, "swin.depths", list(swin["depths"]), "more blocks than any Swin has")
    try:
        return SwinConfig(**swin), TagHeadConfig(**head), antialias
    except TadsrError as err:
        raise ConfigError(f"{path}: {first_line(err)}") from None


def load_dape(folder: Path, device: str | torch.device = "cpu") -> Dape:
    """``dape/``: the image encoder and the tag head from ``dape.safetensors`` (each checked against its header,
    then loaded strictly), the tag names and thresholds from the text files."""
    swin, head_config, antialias = read_dape_config(folder)
    weights = folder / "dape.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{folder}: no dape.safetensors")
    source = str(weights)
    refs = read_header([weights], source)
    encoder_refs = {k: r for k, r in refs.items() if k.startswith(("visual_encoder.", "image_proj."))}
    head_refs = {k: r for k, r in refs.items() if k not in encoder_refs}

    def new_encoder() -> DapeImageEncoder:
        return DapeImageEncoder.from_config(swin, head_config.encoder_width)

    try:
        with torch.device("meta"):
            encoder = new_encoder()
    except TadsrError as err:
        raise ConfigError(f"{folder / 'config.json'}: {first_line(err)}") from None
    encoder_fitted = fit_network(encoder, encoder_refs, source)
    head = build_on_meta(TagHead, head_config, source)
    head_fitted = fit_network(head, head_refs, source)
    names = read_tag_list(folder / "tag_list.txt")
    if len(names) != head_config.num_classes:
        raise ConfigError(f"{folder / 'tag_list.txt'}: {len(names)} names for a tag head of {head_config.num_classes} "
                          "classes")
    thresholds = read_thresholds(folder / "thresholds.txt", len(names))
    def empty_encoder() -> DapeImageEncoder:  # allocated, not initialised; the derived buffers computed
        allocated = encoder.to_empty(device=device)
        allocated.visual_encoder.reset_derived_buffers()
        return allocated

    try:
        encoder = materialize(encoder, encoder_fitted, device, empty_encoder)
        head = materialize(head, head_fitted, device, lambda: TagHead(head_config))
    except TadsrError:
        raise
    except Exception as err:
        raise CheckpointError(f"{source}: its weights cannot be loaded ({type(err).__name__}: {first_line(err)})") \
            from None
    return Dape(encoder, head, names, thresholds, antialias=antialias).to(device).eval()


# --- the SD parts -----------------------------------------------------------------------------------------------------

def check_tokenizer_files(folder: Path) -> None:
    """A CLIP tokenizer's files in ``folder``: ``vocab.json`` and ``merges.txt``, or ``tokenizer.json``; each a
    regular file of bounded size; a ``tokenizer_config.json`` that names a CLIP tokenizer, if any."""
    if not (folder / "tokenizer.json").is_file():
        for name in ("vocab.json", "merges.txt"):
            if not (folder / name).is_file():
                raise ConfigError(f"{folder}: no {name} (the CLIP tokenizer's files: vocab.json and merges.txt, or "
                                  "tokenizer.json)")
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.exists() and (not path.is_file() or path.stat().st_size > MAX_TOKENIZER_BYTES):
            raise ConfigError(f"{path}: not a regular file of at most {MAX_TOKENIZER_BYTES} bytes")
    path = folder / "tokenizer_config.json"
    if path.is_file():
        name = read_config(path).get("tokenizer_class")
        if name is not None and name not in TOKENIZER_CLASSES:
            raise _fail(path, "tokenizer_class", name, f"not one of {', '.join(TOKENIZER_CLASSES)}")


def load_tokenizer(folder: Path, text_config: dict[str, Any]) -> Any:
    """transformers' ``CLIPTokenizer`` from ``folder``'s files only (no download, no code), its length within the
    text encoder's positions."""
    try:
        import transformers
    except ImportError:
        from tadsr.errors import MissingExtraError

        raise MissingExtraError("SeeSR needs transformers, an optional extra: pip install 'tadsr[sd]'") from None
    check_tokenizer_files(folder)
    try:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:
        raise ConfigError(f"{folder}: the CLIP tokenizer cannot be loaded ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    check_max_length(tokenizer, text_config, folder)
    if len(tokenizer) > text_config["vocab_size"]:
        raise ConfigError(f"{folder}: {len(tokenizer)} tokens; the text encoder's vocab_size is "
                          f"{text_config['vocab_size']}")
    return tokenizer


def _class_name(config: dict[str, Any], path: Path, name: str, key: str = "_class_name") -> None:
    if config.get(key, name) != name:
        raise _fail(path, key, config.get(key), f"this folder holds a {name}")


def _load_text_encoder(folder: Path, device: str | torch.device) -> tuple[Any, dict[str, Any]]:
    import transformers

    path = folder / "config.json"
    config = read_config(path)
    check_text_config(config, str(path))
    _class_name(config, path, "clip_text_model", "model_type")
    if config.get("architectures") not in (None, ["CLIPTextModel"]):
        raise _fail(path, "architectures", config.get("architectures"), "this folder holds a CLIPTextModel")
    source = str(folder)
    try:
        text_config = transformers.CLIPTextConfig.from_dict(config)
    except Exception as err:
        raise ConfigError(f"{path}: not a CLIP text config ({type(err).__name__}: {first_line(err)})") from None
    module = build_on_meta(transformers.CLIPTextModel, text_config, source)
    own = set(module.state_dict())
    refs = {}
    for key, ref in read_header([folder / "model.safetensors"], source).items():
        name = next((n for n in (key, f"text_model.{key}", key.removeprefix("text_model.")) if n in own), key)
        refs[name] = ref
    fitted = fit_network(module, refs, source)
    buffers = [n for n, _ in module.named_buffers() if n not in own]
    if any(not n.endswith("position_ids") for n in buffers):
        raise ConfigError(f"{source}: this transformers' CLIPTextModel has buffers tadsr does not know ({buffers[0]})")
    try:
        module = module.to_empty(device=device)
        for name in buffers:  # CLIP's position ids: 0 .. max_position_embeddings - 1 (non-persistent)
            owner, _, attr = name.rpartition(".")
            sub = module.get_submodule(owner)
            setattr(sub, attr, torch.arange(config["max_position_embeddings"], device=device).expand((1, -1)))
        state = module.state_dict()
        from safetensors import safe_open

        with torch.no_grad(), safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            for key, ref in fitted.items():
                state[key].copy_(f.get_tensor(ref.key))
    except TadsrError:
        raise
    except Exception as err:
        raise ConfigError(f"{source}: its weights cannot be loaded ({type(err).__name__}: {first_line(err)})") \
            from None
    return module.float().eval(), config


def _load_network(folder: Path, part: str, device: str | torch.device) -> tuple[Any, Any]:
    from tadsr.seesr.nets import load_network

    if not (folder / "diffusion_pytorch_model.safetensors").is_file():  # never a .bin here
        raise ConfigError(f"{folder}: no diffusion_pytorch_model.safetensors")
    model, image = load_network(folder, part)
    return model.to(device), image


def load_seesr(folder: str | os.PathLike, device: str | torch.device = "cpu") -> SeeSRParts:
    """A folder of ``tadsr convert seesr`` as ``SeeSRParts``: every network float32, eval mode, on ``device``.

    The settings and every config are checked first, and each network's weights' header before that network is
    allocated; any problem is one line naming the file and the key."""
    folder = Path(folder)
    settings = read_settings(folder)
    for part in ("unet", "controlnet", "vae", "text_encoder", "tokenizer", "scheduler", "dape"):
        if not (folder / part).is_dir():
            raise ConfigError(f"{folder}: no {part}/ folder (a SeeSR folder from `tadsr convert seesr` holds unet/, "
                              "controlnet/, vae/, text_encoder/, tokenizer/, scheduler/, dape/)")
    diffusers = import_diffusers()
    path = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = read_config(path)
    _class_name(scheduler_config, path, "DDPMScheduler")
    check_scheduler_config(scheduler_config, str(path), sampler=True)
    scheduler = build_scheduler(diffusers, "DDPMScheduler", scheduler_config, str(path))
    steps = int(scheduler.config.num_train_timesteps)
    if settings.timestep >= steps:
        raise ConfigError(f"{folder / INDEX}: timestep = {settings.timestep}: the scheduler has {steps} steps")
    path = folder / "vae" / "config.json"
    vae_config = read_config(path)
    _class_name(vae_config, path, "AutoencoderKL")
    check_vae_config(vae_config, str(path))
    vae_refs = read_header([folder / "vae" / "diffusion_pytorch_model.safetensors"], str(folder / "vae"))
    text_path = folder / "text_encoder" / "config.json"
    text_config = read_config(text_path)
    check_text_config(text_config, str(text_path))
    width, latent = text_config["hidden_size"], vae_config["latent_channels"]
    for part in ("unet", "controlnet"):
        path = folder / part / "config.json"
        config = read_config(path)
        for key, value, what in (("in_channels", latent, f"the VAE's latent has {latent} channels"),
                                 ("cross_attention_dim", width, f"the text encoder gives {width}-wide embeddings")):
            if config.get(key) != value:
                raise _fail(path, key, config.get(key), what)
    text_encoder, text_config = _load_text_encoder(folder / "text_encoder", device)
    tokenizer = load_tokenizer(folder / "tokenizer", text_config)
    vae = open_network(diffusers.AutoencoderKL, vae_config, vae_refs, str(folder / "vae"), device)
    unet, unet_image = _load_network(folder / "unet", "unet", device)
    controlnet, controlnet_image = _load_network(folder / "controlnet", "controlnet", device)
    dape = load_dape(folder / "dape", device)
    return SeeSRParts(unet=unet, unet_image=unet_image, controlnet=controlnet, controlnet_image=controlnet_image,
                      vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, dape=dape,
                      settings=settings, folder=folder)
