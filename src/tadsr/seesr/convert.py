"""``tadsr convert seesr``: a SeeSR / TAD-SeeSR release, the SD-2-base folder it runs on and DAPE's RAM weights ->
one model folder of safetensors, JSON and text (the layout of ``tadsr.seesr.parts``).

What a user holds (read from cswry/SeeSR 8edecc71 ``test_seesr.py``, Apache-2.0; the TAD-SeeSR release of
LearningHx/TAD-SR has the same ``unet/`` + ``controlnet/`` layout):

* ``--pretrained_model_path``: Stable Diffusion 2 base as diffusers saves it; SeeSR reads its ``vae/``
  (``AutoencoderKL``), ``text_encoder/`` (``CLIPTextModel``), ``tokenizer/`` (``CLIPTokenizer``) and the config of
  ``scheduler/`` (read as a ``DDPMScheduler``: ``DDPMScheduler.from_pretrained(..., subfolder="scheduler")``; the
  hub folder names a ``PNDMScheduler``, whose betas are the same).
* ``--seesr_model_path``: ``unet/`` and ``controlnet/``, each ``config.json`` + weights (``save_pretrained``'s
  ``diffusion_pytorch_model.safetensors`` or ``.bin``); ``tadsr.seesr.nets.load_network`` checks and loads them.
* RAM's ``ram_swin_large_14m.pth`` (``{'model': state}``) and ``--ram_ft_path`` DAPE.pth, a LoRA-only state dict:
  ``ram_lora.ram(pretrained=RAM, pretrained_condition=DAPE)`` loads the first (``ram/models/utils.py:
  load_checkpoint_swinlarge``: derived buffers dropped, ``vision_multi`` read as ``tagging_head``, strict=False),
  then the second over it (``load_state_dict(strict=False)``). Here only what DAPE uses is kept (the Swin under
  ``visual_encoder.``, ``image_proj``, the tag head and the tied ``tag_encoder`` LoRA that ``tags.tag_head_state``
  merges), DAPE's tensors replace RAM's of the same name, and the LoRA is merged (``dape.merge_lora``,
  ``tags.tag_head_state``): the folder holds plain weights.
* The tag names and thresholds, RAM's Apache-2.0 ``ram/data/ram_tag_list.txt`` and
  ``ram_tag_list_threshold.txt`` (in a SeeSR checkout), copied as they are once checked.

Every pickle is read with ``torch.load(weights_only=True)`` (memory-mapped: RAM's 5.6 GB file is not read whole;
the tensors DAPE does not use are never touched). The folder is written into a temporary sibling and renamed into
place at the end: a failure or a kill leaves no half-written folder under the output's name. Every bad input is
one line (``CheckpointError`` / ``ConfigError``) naming the file and the key.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tadsr.checkpoints import (
    CheckpointError,
    atomic_save_file,
    check_fits,
    load_weights_only,
    read_state_dict,
    unwrap_state_dict,
)
from tadsr.errors import ConfigError, NotFoundError, OutputError, first_line
from tadsr.fileio import atomic_write_bytes, atomic_write_text, content_digest, process_running
from tadsr.sd.diffusers_teacher import (
    TensorRef,
    build_on_meta,
    build_scheduler,
    check_scheduler_config,
    check_text_config,
    check_unet_config,
    check_vae_config,
    fit_network,
    import_diffusers,
    read_config,
    read_header,
)
from tadsr.seesr.dape import DAPE_SWIN_L, DERIVED_BUFFERS, DapeImageEncoder, SwinConfig, merge_lora
from tadsr.seesr.folder import TOKENIZER_FILES, check_tokenizer_files, load_tokenizer
from tadsr.seesr.parts import (
    DEFAULT_GUIDANCE,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_PROMPT,
    DEFAULT_STEPS,
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    ONE_STEP_TIMESTEP,
    PROCESS_SIZE,
    TAD_SEESR_PROMPT,
    VARIANTS,
    Variant,
)
from tadsr.seesr.tags import DAPE_TAG_HEAD, TagHead, TagHeadConfig, read_tag_list, read_thresholds, tag_head_state

# The converted folder's file names (tadsr.seesr.parts)
WEIGHTS = "diffusion_pytorch_model.safetensors"
TEXT_WEIGHTS = "model.safetensors"
DAPE_WEIGHTS = "dape.safetensors"
TAG_LIST = "tag_list.txt"
THRESHOLDS = "thresholds.txt"
# The classes a config may name (diffusers' ``_class_name``, transformers' ``architectures`` / ``model_type``,
# ``tokenizer_class``, checked in tadsr.seesr.folder): nothing else is built. A scheduler config only gives the
# betas of SeeSR's DDPMScheduler.
VAE_CLASSES = ("AutoencoderKL",)
TEXT_CLASSES = ("CLIPTextModel",)
TEXT_MODEL_TYPE = "clip_text_model"
SCHEDULER_SOURCES = ("PNDMScheduler", "DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                     "DPMSolverMultistepScheduler")
SCHEDULER = "DDPMScheduler"  # what SeeSR samples with (test_seesr.py: DDPMScheduler.from_pretrained)
# Weight files of a diffusers / transformers component, in the order looked for (save_pretrained's names)
NETWORK_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TEXT_FILES = ("model.safetensors", "pytorch_model.bin")
TORCH_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
# RAM / DAPE keys DAPE uses (ram_lora.RAMLora: generate_image_embeds and the tag head)
KEPT_PREFIXES = ("visual_encoder.", "image_proj.", "tagging_head.", "vision_multi.", "wordvec_proj.", "fc.")
KEPT_NAMES = ("label_embed",)
_TIED_LORA = re.compile(r"tag_encoder\.encoder\.layer\.(\d+)\.crossattention\.self\.(?:query|key)\.lora_[AB]$")
TAG_FILES_HINT = ("RAM's ram/data/ram_tag_list.txt and ram_tag_list_threshold.txt, in a checkout of "
                  "github.com/cswry/SeeSR (Apache-2.0)")

# The run settings each variant records (tadsr.seesr.parts): SeeSR's test_seesr.py defaults; TAD-SeeSR's one step
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "seesr": {"prompt": DEFAULT_PROMPT, "negative_prompt": DEFAULT_NEGATIVE_PROMPT, "steps": DEFAULT_STEPS,
              "guidance": DEFAULT_GUIDANCE, "timestep": ONE_STEP_TIMESTEP, "process_size": PROCESS_SIZE},
    "tad-seesr": {"prompt": TAD_SEESR_PROMPT, "negative_prompt": DEFAULT_NEGATIVE_PROMPT, "steps": 1,
                  "guidance": 0.0, "timestep": ONE_STEP_TIMESTEP, "process_size": PROCESS_SIZE},
}


def convert_seesr(sd_base: Path, release: Path, ram: Path, dape: Path, out: Path, *, variant: Variant,
                  fp16: bool = False, tag_list: Path | None, thresholds: Path | None, overwrite: bool = False,
                  swin: SwinConfig = DAPE_SWIN_L, tag_head: TagHeadConfig | None = None) -> Path:
    """Write the folder ``out`` (``tadsr.seesr.parts``) from the SD-2-base diffusers folder ``sd_base``, the
    release folder ``release`` (``unet/``, ``controlnet/``), RAM's checkpoint ``ram``, ``dape`` (DAPE.pth) and RAM's
    tag files; returns ``out``.

    ``variant`` picks the run settings recorded (``VARIANT_SETTINGS``); ``fp16`` stores every float tensor as
    float16 (the loader computes in float32). ``swin`` / ``tag_head`` are DAPE's sizes (the released Swin-L, and the
    tag head with one class per name of ``tag_list``); other sizes are for tests. An existing ``out`` is refused
    unless ``overwrite`` and it is a folder this function wrote (one with ``tadsr_seesr.json``): no other folder is
    ever deleted. Each input is checked before anything is written; any failure leaves ``out`` as it was."""
    sd_base, release, ram, dape, out = map(Path, (sd_base, release, ram, dape, out))
    if variant not in VARIANTS:
        raise ConfigError(f"variant {variant!r}: one of {', '.join(VARIANTS)}")
    _check_target(out, overwrite)
    if tag_list is None or thresholds is None:
        missing = " and ".join(n for n, v in (("--tag-list", tag_list), ("--thresholds", thresholds)) if v is None)
        raise ConfigError(f"{missing}: needed to convert SeeSR; pass {TAG_FILES_HINT}")
    tag_list, thresholds = Path(tag_list), Path(thresholds)
    names = read_tag_list(tag_list)
    head_config = replace(DAPE_TAG_HEAD, num_classes=len(names)) if tag_head is None else tag_head
    if head_config.num_classes != len(names):
        raise ConfigError(f"{tag_list}: {len(names)} names for a tag head of {head_config.num_classes} classes")
    read_thresholds(thresholds, len(names))
    for path, what in ((ram, "RAM checkpoint (ram_swin_large_14m.pth)"), (dape, "DAPE checkpoint (DAPE.pth)")):
        if not path.is_file():
            raise NotFoundError(f"{path}: no such file (the {what})")
    plan = _plan_sd_base(sd_base)
    _check_release(release, plan)
    dtype = torch.float16 if fp16 else None

    with _staged_folder(out) as tmp:
        sources: dict[str, str] = {}
        _write_dape(ram, dape, tmp / "dape", swin, head_config, dtype, sources)  # the quickest to fail first
        _write_sd_base(plan, tmp, dtype, sources)
        _write_release(release, tmp, dtype, sources)
        for src, name, key in ((tag_list, TAG_LIST, "tag_list"), (thresholds, THRESHOLDS, "thresholds")):
            data = src.read_bytes()
            atomic_write_bytes(tmp / "dape" / name, data)
            sources[f"{key}/{src.name}"] = content_digest(src)
        from tadsr.version import __version__

        index = {"format": FORMAT, "format_version": FORMAT_VERSION, "variant": variant,
                 **VARIANT_SETTINGS[variant], "tadsr_version": __version__, "fp16": fp16, "sources": sources}
        atomic_write_text(tmp / INDEX, json.dumps(index, indent=2) + "\n")
    return out


def write_student(teacher: Path, out: Path, unet: Mapping[str, Tensor], controlnet: Mapping[str, Tensor]) -> Path:
    """Write the TAD-SeeSR folder ``out`` of a student distilled from the SeeSR folder ``teacher``
    (``tadsr.training.families.seesr``): the student's ``unet`` and ``controlnet`` state dicts with the teacher's
    configs, in the teacher's storage dtype (``fp16`` of its index), and the teacher's VAE, text encoder,
    tokenizer, scheduler and DAPE (hard links where the file system allows, else copies); run settings: one step
    at the teacher's ``timestep``, no guidance, the teacher's prompts. A previous folder this module wrote is
    replaced; anything else at ``out`` is refused. Written beside ``out`` and renamed: a failure leaves ``out``
    as it was. Returns ``out``."""
    from tadsr.seesr.folder import read_index
    from tadsr.version import __version__

    teacher, out = Path(teacher), Path(out)
    index = read_index(teacher)
    _check_target(out, overwrite=True)
    dtype = torch.float16 if index.get("fp16") else None
    with _staged_folder(out) as tmp:
        for part in ("vae", "text_encoder", "tokenizer", "scheduler", "dape"):
            shutil.copytree(teacher / part, tmp / part, copy_function=_link_or_copy)
        for part, state in (("unet", unet), ("controlnet", controlnet)):
            _save(dict(state), tmp / part / WEIGHTS, dtype)
            _write_json(tmp / part / "config.json", read_config(teacher / part / "config.json"))
        settings = {**{k: index[k] for k in ("prompt", "negative_prompt", "timestep", "process_size") if k in index},
                    "variant": "tad-seesr", "steps": 1, "guidance": 0.0}
        student_index = {"format": FORMAT, "format_version": FORMAT_VERSION, **settings,
                         "tadsr_version": __version__, "fp16": bool(index.get("fp16", False)),
                         "sources": {f"teacher/{INDEX}": content_digest(teacher / INDEX)}}
        atomic_write_text(tmp / INDEX, json.dumps(student_index, indent=2) + "\n")
    return out


@contextlib.contextmanager
def _staged_folder(out: Path) -> Iterator[Path]:
    """A new folder beside ``out`` (``.OUT.PID.XXXXXXXX.tmp``, a plain mkdir's mode) to write the whole model into;
    renamed to ``out`` when the block ends (``_replace_folder``), deleted if it raises: ``out`` is never
    half-written. Temporaries a killed writer left beside ``out`` are removed first (``remove_stale_folders``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a plain mkdir's mode (mkdtemp's is owner-only); its subfolders have it
        yield tmp
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _link_or_copy(src: str, dst: str) -> str:
    """A hard link of ``src`` at ``dst`` (the teacher's frozen parts are not copied), or a copy across devices."""
    try:
        os.link(src, dst)
        return dst
    except OSError:
        return shutil.copy2(src, dst)


# --- the output folder ------------------------------------------------------------------------------------------------

def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise OutputError(f"{out}: exists; pass --overwrite to replace it")
    if not out.is_dir() or out.is_symlink() or not (out / INDEX).is_file():
        raise OutputError(f"{out}: not a SeeSR folder written by tadsr (no {INDEX}); --overwrite replaces only such "
                          "a folder")


def remove_stale_folders(out: Path) -> list[Path]:
    """Delete the temporary siblings of ``out`` a killed conversion left (``.OUT.PID.XXXXXXXX.tmp`` / ``.old``, the
    names this module gives them) whose process is gone, each said in a warning. Returns them."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.[A-Za-z0-9_]{{8}}\.(?:tmp|old)$")
    removed = []
    for path in out.parent.iterdir() if out.parent.is_dir() else []:
        found = pattern.match(path.name)
        if found and path.is_dir() and not path.is_symlink() and not process_running(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            warnings.warn(f"{path}: removed a folder left by an interrupted conversion", RuntimeWarning,
                          stacklevel=3)
            removed.append(path)
    return removed


def _replace_folder(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; a previous ``out`` (checked by ``_check_target``) is moved aside
    first and deleted after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".old"))
        os.replace(out, old / "folder")
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / "folder", out)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save(tensors: dict[str, Tensor], path: Path, dtype: torch.dtype | None) -> None:
    """Safetensors of contiguous CPU copies, floats as ``dtype`` if given (diffusers' and transformers' metadata)."""
    out = {}
    for key in list(tensors):
        value = tensors.pop(key).detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    atomic_save_file(out, path, {"format": "pt"})


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# --- SD-2-base: vae/, text_encoder/, tokenizer/, scheduler/ ---------------------------------------------------------

def _find(folder: Path, names: tuple[str, ...], what: str) -> Path:
    found = next((folder / n for n in names if (folder / n).is_file()), None)
    if found is None:
        raise ConfigError(f"{folder}: no {' or '.join(names)} ({what})")
    return found


def _part(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_dir():
        raise ConfigError(f"{folder}: no {name}/ folder (SeeSR runs on Stable Diffusion 2 base as diffusers saves it: "
                          "vae/, text_encoder/, tokenizer/, scheduler/)")
    return path


def _class_of(config: Mapping[str, Any], source: Path, allowed: tuple[str, ...], key: str = "_class_name") -> None:
    name = config.get(key)
    if name is not None and name not in allowed:
        shown = repr(name[:60]) if isinstance(name, str) else json.dumps(name)[:60]
        raise ConfigError(f"{source}: {key} = {shown}: not one of {', '.join(allowed)}")


class _Plan:
    """SD-2-base's checked configs and weight files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.vae_dir, self.text_dir = _part(folder, "vae"), _part(folder, "text_encoder")
        self.tokenizer_dir, self.scheduler_dir = _part(folder, "tokenizer"), _part(folder, "scheduler")
        self.vae = read_config(self.vae_dir / "config.json")
        self.text = read_config(self.text_dir / "config.json")
        self.scheduler = read_config(self.scheduler_dir / "scheduler_config.json")
        self.vae_file = _find(self.vae_dir, NETWORK_FILES, "the VAE's weights")
        self.text_file = _find(self.text_dir, TEXT_FILES, "the text encoder's weights")


def _plan_sd_base(folder: Path) -> _Plan:
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such folder (Stable Diffusion 2 base, as diffusers saves it)")
    plan = _Plan(folder)
    source = plan.vae_dir / "config.json"
    _class_of(plan.vae, source, VAE_CLASSES)
    check_vae_config(plan.vae, str(source))
    source = plan.text_dir / "config.json"
    check_text_config(plan.text, str(source))
    architectures = plan.text.get("architectures") or []
    if not isinstance(architectures, list) or any(a not in TEXT_CLASSES for a in architectures):
        raise ConfigError(f"{source}: architectures = {json.dumps(architectures)[:60]}: not {TEXT_CLASSES[0]}")
    _class_of(plan.text, source, (TEXT_MODEL_TYPE,), "model_type")
    source = plan.scheduler_dir / "scheduler_config.json"
    _class_of(plan.scheduler, source, SCHEDULER_SOURCES)
    check_scheduler_config(plan.scheduler, str(source), sampler=True)
    if plan.scheduler.get("prediction_type", "epsilon") != "epsilon":
        raise ConfigError(f"{source}: prediction_type = {json.dumps(plan.scheduler['prediction_type'])[:40]}: SeeSR "
                          "is trained on Stable Diffusion 2 base, whose UNet predicts the noise ('epsilon')")
    check_tokenizer_files(plan.tokenizer_dir)
    return plan


def _weights(file: Path, source: str) -> tuple[dict[str, TensorRef], Callable[[dict[str, TensorRef]], dict]]:
    """The tensors of a safetensors file (its header; read when asked for) or of a ``.bin`` read with
    ``torch.load(weights_only=True)``, as ``TensorRef``s, and what reads the chosen ones."""
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        def read(chosen: dict[str, TensorRef]) -> dict[str, Tensor]:
            with safe_open(str(file), framework="pt") as f:
                return {key: f.get_tensor(ref.key) for key, ref in chosen.items()}

        return read_header([file], source), read
    state = read_state_dict(file)
    refs = {k: TensorRef(file, k, tuple(v.shape), TORCH_DTYPES.get(v.dtype, str(v.dtype))) for k, v in state.items()}
    return refs, lambda chosen: {key: state[ref.key] for key, ref in chosen.items()}


def _network_tensors(module: torch.nn.Module, file: Path, source: str,
                     tolerate: Callable[[str], bool] = lambda key: False,
                     alias: Callable[[str], str] = lambda key: key) -> dict[str, Tensor]:
    """The tensors of ``file`` by ``module``'s state-dict keys (built on the meta device), once they fit it
    (``fit_network``: one line naming the missing, unexpected and mis-shaped keys)."""
    refs, read = _weights(file, source)
    fitted = fit_network(module, {alias(k): ref for k, ref in refs.items()}, source, tolerate)
    try:
        return read(fitted)
    except Exception as err:  # safetensors' own errors: a file damaged past its header
        raise CheckpointError(f"{file}: a tensor cannot be read ({type(err).__name__}: {first_line(err)})") from None


def _text_alias(own: set[str]) -> Callable[[str], str]:
    """A weight's key as the installed transformers names it: with or without the ``text_model.`` prefix (its
    layouts differ by version)."""
    def alias(key: str) -> str:
        for name in (key, f"text_model.{key}", key.removeprefix("text_model.")):
            if name in own:
                return name
        return key

    return alias


def _write_sd_base(plan: _Plan, out: Path, dtype: torch.dtype | None, sources: dict[str, str]) -> None:
    diffusers = import_diffusers()
    import transformers

    def record(path: Path) -> None:
        sources[f"sd_base/{path.relative_to(plan.folder)}"] = content_digest(path)

    source = str(plan.vae_dir)
    vae = build_on_meta(diffusers.AutoencoderKL, plan.vae, source)
    _save(_network_tensors(vae, plan.vae_file, source), out / "vae" / WEIGHTS, dtype)
    _write_json(out / "vae" / "config.json", plan.vae)
    record(plan.vae_dir / "config.json")
    record(plan.vae_file)

    source = str(plan.text_dir)
    try:
        text_config = transformers.CLIPTextConfig.from_dict(plan.text)
    except Exception as err:
        raise ConfigError(f"{plan.text_dir / 'config.json'}: not a CLIP text config ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    text = build_on_meta(transformers.CLIPTextModel, text_config, source)
    tensors = _network_tensors(text, plan.text_file, source, tolerate=lambda key: key.endswith("position_ids"),
                               alias=_text_alias(set(text.state_dict())))
    _save(tensors, out / "text_encoder" / TEXT_WEIGHTS, dtype)
    _write_json(out / "text_encoder" / "config.json", plan.text)
    record(plan.text_dir / "config.json")
    record(plan.text_file)

    (out / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        path = plan.tokenizer_dir / name
        if path.is_file():
            atomic_write_bytes(out / "tokenizer" / name, path.read_bytes())
            record(path)
    load_tokenizer(out / "tokenizer", plan.text)  # the copies load, and fit the text encoder

    source = str(plan.scheduler_dir / "scheduler_config.json")
    accepted = inspect.signature(diffusers.DDPMScheduler.__init__).parameters  # a PNDM config's extras dropped
    config = {k: v for k, v in plan.scheduler.items() if k in accepted and k != "self"}
    scheduler = build_scheduler(diffusers, SCHEDULER, config, source)
    (out / "scheduler").mkdir()
    atomic_write_text(out / "scheduler" / "scheduler_config.json", scheduler.to_json_string())
    record(plan.scheduler_dir / "scheduler_config.json")


# --- the release: unet/, controlnet/ ----------------------------------------------------------------------------------

def _check_release(release: Path, plan: _Plan) -> None:
    """The release folder holds both networks' configs and weights, and they fit SD-2-base's VAE and text encoder
    (read from the configs alone)."""
    from tadsr.seesr.nets import NETWORKS, WEIGHT_FILES

    if not release.is_dir():
        raise NotFoundError(f"{release}: no such folder (the SeeSR / TAD-SeeSR release: unet/ and controlnet/)")
    latent, width = plan.vae["latent_channels"], plan.text["hidden_size"]
    for part in NETWORKS:
        folder = release / part
        if not folder.is_dir():
            raise ConfigError(f"{release}: no {part}/ folder (a SeeSR / TAD-SeeSR release holds unet/ and "
                              "controlnet/)")
        config = read_config(folder / "config.json")
        source = str(folder / "config.json")
        if part == "unet":
            check_unet_config({k: v for k, v in config.items() if k != "use_image_cross_attention"}, source)
        _find(folder, WEIGHT_FILES, f"the {part}'s weights")
        channels = ("in_channels", "out_channels") if part == "unet" else ("in_channels",)
        for key in channels:
            if config.get(key) != latent:
                raise ConfigError(f"{source}: {key} = {json.dumps(config.get(key))[:40]}: the VAE's latent has "
                                  f"{latent} channels")
        if config.get("cross_attention_dim") != width:
            raise ConfigError(f"{source}: cross_attention_dim = {json.dumps(config.get('cross_attention_dim'))[:40]}: "
                              f"the text encoder gives {width}-wide embeddings")


def _write_release(release: Path, out: Path, dtype: torch.dtype | None, sources: dict[str, str]) -> None:
    from tadsr.seesr.nets import WEIGHT_FILES, load_network

    for part in ("unet", "controlnet"):
        folder = release / part
        weights = _find(folder, WEIGHT_FILES, f"the {part}'s weights")
        model, _ = load_network(folder, part)
        tensors = dict(model.state_dict())
        del model
        _save(tensors, out / part / WEIGHTS, dtype)
        _write_json(out / part / "config.json", read_config(folder / "config.json"))
        for path in (folder / "config.json", weights):
            sources[f"release/{path.relative_to(release)}"] = content_digest(path)


# --- DAPE: RAM + DAPE.pth -> dape/ ----------------------------------------------------------------------------------

def _kept(key: str, layers: int) -> bool:
    """Whether DAPE uses a RAM / DAPE.pth tensor: its image encoder, tag head, or the LoRA of the ``tag_encoder``
    layers tied to the tag head (``tags.tag_head_state``)."""
    if key.startswith(KEPT_PREFIXES) or key in KEPT_NAMES:
        return key.rsplit(".", 1)[-1] not in DERIVED_BUFFERS
    tied = _TIED_LORA.match(key)
    return tied is not None and int(tied.group(1)) < layers


def _read_ram_state(path: Path, layers: int, what: str) -> dict[str, Tensor]:
    """The tensors DAPE uses from an official pickle (``{'model': state}`` or a bare state dict), read with
    ``torch.load(weights_only=True)``, memory-mapped; the others are dropped unread."""
    loaded = load_weights_only(path)
    state = unwrap_state_dict(loaded, path)
    del loaded
    kept = {k: v for k, v in state.items() if _kept(k, layers)}
    state.clear()
    if not kept:
        raise CheckpointError(f"{path}: holds none of DAPE's tensors (visual_encoder.*, tagging_head.*, ...): not "
                              f"{what}")
    return kept


def official_shapes(swin: SwinConfig, head: TagHeadConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor DAPE reads, by its name in RAM's and DAPE.pth's state dicts (LoRA included;
    ``vision_multi.*`` as ``tagging_head.*``)."""
    with torch.device("meta"):
        encoder = DapeImageEncoder.from_config(swin, head.encoder_width)
        shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
        shapes.update({k: tuple(v.shape) for k, v in TagHead(head).state_dict().items()})
    parts = sum(swin.lora_enable)
    for stage, (depth, dim) in enumerate(zip(swin.depths, swin.stage_dims, strict=True)):
        for block in range(depth):
            name = f"visual_encoder.layers.{stage}.blocks.{block}.attn.qkv"
            shapes[f"{name}.lora_A"] = (swin.lora_r * parts, dim)
            shapes[f"{name}.lora_B"] = (dim * parts, swin.lora_r)
    for i in range(head.num_layers):
        for proj, width in (("query", head.hidden_size), ("key", head.encoder_width)):
            for owner in ("tagging_head", "tag_encoder"):
                name = f"{owner}.encoder.layer.{i}.crossattention.self.{proj}"
                shapes[f"{name}.lora_A"] = (head.lora_r, width)
                shapes[f"{name}.lora_B"] = (head.hidden_size, head.lora_r)
    return shapes


def _check_shapes(state: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """One line naming the first tensor of ``state`` whose shape is not DAPE's, or that is not a float."""
    for key, value in state.items():
        name = "tagging_head." + key.removeprefix("vision_multi.") if key.startswith("vision_multi.") else key
        if name not in shapes:
            continue  # dropped later (tags.tag_head_state), as ram_lora's strict=False load ignores it
        if tuple(value.shape) != shapes[name]:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, DAPE's is {shapes[name]} (not "
                                  "the checkpoint of SeeSR's DAPE, or other sizes)")
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: {key} is {value.dtype}, not a float tensor")


def _write_dape(ram: Path, dape: Path, out: Path, swin: SwinConfig, head: TagHeadConfig, dtype: torch.dtype | None,
                sources: dict[str, str]) -> None:
    shapes = official_shapes(swin, head)
    state = _read_ram_state(ram, head.num_layers, "RAM's checkpoint (ram_swin_large_14m.pth)")
    _check_shapes(state, shapes, ram)
    update = _read_ram_state(dape, head.num_layers, "SeeSR's DAPE.pth")
    if not any(k.endswith((".lora_A", ".lora_B")) for k in update):
        raise CheckpointError(f"{dape}: holds no LoRA tensors (lora_A / lora_B): not SeeSR's DAPE.pth (its LoRA "
                              "fine-tune of RAM)")
    _check_shapes(update, shapes, dape)
    state.update(update)  # ram_lora.ram: DAPE.pth loaded over RAM's weights (strict=False)
    del update
    source = f"{ram} + {dape}"
    encoder_state = {k: state.pop(k) for k in list(state) if k.startswith(("visual_encoder.", "image_proj."))}
    try:
        encoder_state = merge_lora(encoder_state, swin, prefix="visual_encoder.")
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {str(err).removeprefix('merge_lora: ')}") from None
    with torch.device("meta"):
        encoder = DapeImageEncoder.from_config(swin, head.encoder_width)
    check_fits(encoder, {k: tuple(v.shape) for k, v in encoder_state.items()}, source)
    tensors = {**encoder_state, **tag_head_state(state, head, source=source)}
    del state, encoder_state
    config = {"swin": asdict(swin), "tag_head": asdict(head), "antialias": False}
    _save(tensors, out / DAPE_WEIGHTS, dtype)
    _write_json(out / "config.json", config)
    sources[f"ram/{ram.name}"] = content_digest(ram)
    sources[f"dape/{dape.name}"] = content_digest(dape)


__all__ = ["VARIANT_SETTINGS", "convert_seesr", "official_shapes", "remove_stale_folders"]
