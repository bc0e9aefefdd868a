"""A SeeSR / TAD-SeeSR model folder as tadsr writes it (``tadsr convert seesr``), and its parts once loaded.

The folder (every file safetensors or JSON or text; nothing in it is executed, no pickle is read once converted)::

    FOLDER/
      tadsr_seesr.json         {"format": "tadsr-seesr", "format_version": 1, "variant": "seesr" | "tad-seesr",
                                "prompt": ..., "negative_prompt": ..., "steps": ..., "guidance": ...,
                                "timestep": 999, "process_size": 512, "tadsr_version": ..., "fp16": false,
                                "sources": {input file (e.g. "sd_base/vae/config.json", "ram/NAME.pth"): its sha256}}
      unet/                    config.json (its "use_image_cross_attention": true) and
                               diffusion_pytorch_model.safetensors
      controlnet/              the same, SeeSR's ControlNet
      vae/                     SD-2-base's AutoencoderKL: config.json + diffusion_pytorch_model.safetensors
      text_encoder/            SD-2-base's CLIPTextModel: config.json + model.safetensors
      tokenizer/               SD-2-base's CLIP tokenizer files (vocab.json, merges.txt, tokenizer_config.json,
                               special_tokens_map.json; or tokenizer.json, as transformers 5 saves it)
      scheduler/               scheduler_config.json (a DDPMScheduler config with SD-2-base's betas and offsets)
      dape/                    config.json ({"swin": SwinConfig fields, "tag_head": TagHeadConfig fields,
                               "antialias": false}), dape.safetensors (the merged Swin under visual_encoder.*,
                               image_proj.*, the tag head under its RAM names), tag_list.txt, thresholds.txt

``variant`` says how the model runs by default: "tad-seesr" one step at ``timestep`` (TAD-SR Appendix B; no
classifier-free guidance), "seesr" the DDPM sampler for ``steps`` steps with guidance ``guidance`` (SeeSR's 50 and
5.5). ``prompt`` is the text added after the tags, ``negative_prompt`` the guidance's negative (SeeSR's defaults).
``process_size`` is the test scripts' ``--process_size`` (512): an LR with a side under process_size // 4 is
enlarged to that short side before x4, and the output resized back (the short-side rule, ``tadsr.seesr.pipeline``);
0 leaves the rule out; a folder without the key has 512.

``SeeSRParts`` is what a loaded folder gives the pipeline: every network in eval mode, float32, on one device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from tadsr.checkpoints import SEESR_INDEX
from tadsr.seesr.nets import ImageAttention
from tadsr.seesr.tags import Dape

FORMAT = "tadsr-seesr"
FORMAT_VERSION = 1
INDEX = SEESR_INDEX  # the file that makes a folder a SeeSR model (``tadsr.checkpoints.model_kind``)
Variant = Literal["seesr", "tad-seesr"]
VARIANTS: tuple[Variant, ...] = ("seesr", "tad-seesr")

# SeeSR's defaults (test_seesr.py at cswry/SeeSR 8edecc71): the text after the tags, the negative prompt, the
# sampler's steps and guidance scale; TAD-SeeSR (LearningHx/TAD-SR TAD-SeeSR/test_tadsr.py) runs one step at 999
DEFAULT_PROMPT = "clean, high-resolution, 8k"
TAD_SEESR_PROMPT = "clean, high-resolution, 8k, extremely detailed, best quality, sharp"
DEFAULT_NEGATIVE_PROMPT = "dotted, noise, blur, lowres, smooth"
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.5
ONE_STEP_TIMESTEP = 999
PROCESS_SIZE = 512  # test_seesr.py:255 --process_size; its // 4 is the least LR side (short-side rule)


@dataclass(frozen=True)
class SeeSRSettings:
    """``tadsr_seesr.json``'s run settings (module docstring)."""

    variant: Variant
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    timestep: int = ONE_STEP_TIMESTEP
    process_size: int = PROCESS_SIZE  # the short-side rule's (an LR side under process_size // 4 is enlarged); 0: off


@dataclass
class SeeSRParts:
    """A loaded folder: ``unet`` and ``controlnet`` (diffusers' classes) with their ``ImageAttention`` handles
    (``unet_image``, ``controlnet_image``: feed DAPE's embeddings through ``attending``), ``vae``,
    ``text_encoder``, ``tokenizer`` (transformers' CLIP classes), ``scheduler`` (diffusers' DDPMScheduler),
    ``dape`` (``tadsr.seesr.tags.Dape``: LR -> embeddings and tags), ``settings`` and ``folder``."""

    unet: nn.Module
    unet_image: ImageAttention
    controlnet: nn.Module
    controlnet_image: ImageAttention
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler: Any
    dape: Dape
    settings: SeeSRSettings
    folder: Path
