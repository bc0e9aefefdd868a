"""A full-size SeeSR model folder with random weights, in the layout of ``tadsr.seesr.parts`` (what ``tadsr convert
seesr --variant seesr`` writes), for timing and memory runs that need no released weights.

The networks have the released shapes (``seesr_speed.py``'s configs: SD-2-base's UNet with SeeSR's image
cross-attention, the ControlNet built from it, SD-2-base's VAE and OpenCLIP-H text encoder, DAPE's Swin-L at 384
with image_proj and the 4585-class tag head) and ``seesr_speed.fill``'s seeded values (finite; the pictures they
make mean nothing). The tokenizer is a CLIP tokenizer of single characters written here (nothing downloaded), its
length 77; the tag names are ``tag0`` ... and every threshold 0.68. Weights are written as float16 by default (the
folder's ``fp16``: loaded as float32), 4.6 GB.

Usage: python benchmarks/seesr_random_folder.py OUT [--fp32] [--variant seesr|tad-seesr]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import string
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from seesr_speed import TadsrSide  # noqa: E402

import tadsr  # noqa: E402
from tadsr.seesr.convert import VARIANT_SETTINGS  # noqa: E402
from tadsr.seesr.dape import DAPE_SWIN_L, DERIVED_BUFFERS  # noqa: E402
from tadsr.seesr.parts import FORMAT, FORMAT_VERSION, INDEX  # noqa: E402
from tadsr.seesr.tags import DAPE_TAG_HEAD  # noqa: E402

# SD-2-base's scheduler (its scheduler_config.json's values), read as the DDPMScheduler SeeSR samples with
SD2_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                 "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
                 "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "leading"}


def _state(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()}


def _network(out: Path, model: nn.Module, dtype: torch.dtype) -> None:
    """``save_pretrained``'s layout with SeeSR's ``use_image_cross_attention`` (``tadsr.seesr.nets.load_network``)."""
    out.mkdir(parents=True)
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config = {"_class_name": type(model).__name__, **config, "use_image_cross_attention": True}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    save_file(_state(model, dtype), str(out / "diffusion_pytorch_model.safetensors"))


def _tokenizer(out: Path) -> None:
    """A CLIP tokenizer that spells every word by its characters (no merges), 77 tokens long."""
    import transformers

    out.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for i, ch in enumerate(string.ascii_lowercase + string.digits + ",.-'"):
        vocab.setdefault(ch, 10 + 2 * i)
        vocab.setdefault(f"{ch}</w>", 11 + 2 * i)
    src = out.parent / ".tokenizer-src"
    src.mkdir()
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(src / "vocab.json"), str(src / "merges.txt"), model_max_length=77,
                                           pad_token="!")
    tokenizer.save_pretrained(str(out))
    for f in src.iterdir():
        f.unlink()
    src.rmdir()


def write_folder(out: Path, dtype: torch.dtype, variant: str) -> None:
    if out.exists():
        raise SystemExit(f"{out}: exists")
    side = TadsrSide()
    out.mkdir(parents=True)
    for name, build in (("unet", side.unet), ("controlnet", side.controlnet)):
        model, _ = build()
        _network(out / name, model, dtype)
        del model
        print(f"{name}: written", flush=True)
    vae = side.vae()
    (out / "vae").mkdir()
    vae_config = {"_class_name": "AutoencoderKL", **{k: v for k, v in dict(vae.config).items()
                                                       if not k.startswith("_")}}
    (out / "vae" / "config.json").write_text(json.dumps(vae_config, indent=1))
    save_file(_state(vae, dtype), str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    text = side.text_encoder()
    text.to(dtype).save_pretrained(str(out / "text_encoder"), safe_serialization=True)
    _tokenizer(out / "tokenizer")
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD2_SCHEDULER, indent=1))
    dape, head = side.dape(), side.tag_head()
    (out / "dape").mkdir()
    (out / "dape" / "config.json").write_text(json.dumps(
        {"swin": dataclasses.asdict(DAPE_SWIN_L),
         "tag_head": dataclasses.asdict(DAPE_TAG_HEAD), "antialias": False}, indent=1))
    state = {k: v for k, v in _state(dape, dtype).items() if k.rsplit(".", 1)[-1] not in DERIVED_BUFFERS}
    save_file({**state, **_state(head, dtype)}, str(out / "dape" / "dape.safetensors"))
    (out / "dape" / "tag_list.txt").write_text("".join(f"tag{i}\n" for i in range(DAPE_TAG_HEAD.num_classes)))
    (out / "dape" / "thresholds.txt").write_text("0.68\n" * DAPE_TAG_HEAD.num_classes)
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "variant": variant, **VARIANT_SETTINGS[variant],
             "tadsr_version": tadsr.__version__, "fp16": dtype == torch.float16, "sources": {}}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    print(f"{out}: a random full-size {variant} folder", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--fp32", action="store_true", help="float32 weights (9.2 GB) instead of float16")
    parser.add_argument("--variant", choices=("seesr", "tad-seesr"), default="seesr",
                        help="seesr: the teacher tadsr distill takes; tad-seesr: a one-step folder")
    args = parser.parse_args()
    write_folder(args.out, torch.float32 if args.fp32 else torch.float16, args.variant)


if __name__ == "__main__":
    main()
