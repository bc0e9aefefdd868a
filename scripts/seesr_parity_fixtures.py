"""Write tiny parity fixtures from the official SeeSR modules (UNet, ControlNet, DAPE's LoRA Swin).

The fixtures let tadsr's SeeSR port be checked against the official code without the release weights: tiny
random modules with the real key layout, saved the way the release is, and their outputs on fixed inputs.
This script is the only place the official code runs; it imports SeeSR's own files from a checkout that you
pass (nothing of SeeSR is copied into tadsr) and never touches the network.

Reference environment (outside the repository; the official modules need diffusers 0.21, which needs an old
huggingface_hub; no xformers):

    python3.11 -m venv /work/seesr-ref/venv
    /work/seesr-ref/venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/seesr-ref/venv/bin/pip install diffusers==0.21.0 huggingface_hub==0.25.2 transformers==4.44.2 \
        'numpy<2' timm loralib fairscale scipy safetensors accelerate
    git clone https://github.com/cswry/SeeSR /work/seesr-ref/SeeSR
    git -C /work/seesr-ref/SeeSR checkout 8edecc71c4f3efa01cd26078f2e8dffd1ce80a6a

Run (the committed fixtures in tests/data/seesr_parity were made this way, at that SeeSR commit, seed 0):

    HF_HUB_OFFLINE=1 /work/seesr-ref/venv/bin/python scripts/seesr_parity_fixtures.py \
        --seesr /work/seesr-ref/SeeSR --out tests/data/seesr_parity --seed 0

What it imports from the checkout, and how: models/unet_2d_condition.py, models/controlnet.py (and the
models/unet_2d_blocks.py they import) as a package named `seesr_models` whose path is the checkout's models/;
ram/models/swin_transformer_lora.py by file path alone. The `ram` package itself is never imported: its
__init__ imports ram.models.ram, whose RAM builds a BERT tokenizer (bert-base-uncased download) at construction.

Files written under --out (float32, contiguous):
    release/unet/, release/controlnet/   config.json + diffusion_pytorch_model.safetensors (official save_pretrained,
                                         use_image_cross_attention=True, every weight random, zero convs too)
    io.safetensors                       x, t, txt, img, cond -> ControlNet down0..downM, mid -> UNet eps
    swin/config.json, swin/state.safetensors, swin/io.safetensors
                                         RAM's LoRA Swin as DAPE builds it; state before the LoRA merge; x -> y
    README.md                            what made them
    tagging/                             DAPE's tag head (RAM's tagging_head, label_embed, wordvec_proj, fc, built
                                         from ram/models/bert_lora.py as ram/models/ram_lora.py:RAMLora builds
                                         them, LoRA and the tied tag_encoder LoRA included), image_proj, the tags
                                         the official generate_tag writes, and the official DAPE preprocessing;
                                         tagging/README.md describes every file
After writing, it reloads every module from the written files in fresh instances and checks that the outputs
reproduce bit for bit (it exits non-zero otherwise).

For tagging/, ram/models/ram_lora.py is imported (with the bert_lora.py, utils.py, ... it imports) as a package
named `seesr_ram_models` whose path is the checkout's ram/models/, so `ram/__init__.py` still never runs; RAMLora
itself is never constructed (its __init__ downloads bert-base-uncased): its methods run on a module holding only
the parts they use.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io as stdio
import json
import math
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

# Sizes of the tiny modules. The UNet keeps SD-2's layout (cross-attention blocks then a plain one, two layers per
# block, linear projections in the transformers, list-valued attention_head_dim = heads per block, in diffusers'
# old naming) at widths that keep the whole fixture folder under 1.5 MB. Heads (4, 2) give 4 heads of 2 channels
# at width 8 and 2 of 8 at width 16 (mid block: the last entry; up blocks: the list reversed), so a swap of heads
# and head width, or of the list's order, changes the result. The image cross-attention width (512) is hard-coded
# in SeeSR's blocks.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (8, 16),
    "layers_per_block": 2,
    "norm_num_groups": 4,
    "cross_attention_dim": 32,
    "attention_head_dim": (4, 2),
    "use_linear_projection": True,
    "use_image_cross_attention": True,
}
CONDITIONING_CHANNELS = (8, 8, 16, 16)  # ControlNet hint encoder (SeeSR: diffusers' default (16, 32, 96, 256))
IMAGE_DIM = 512  # image_cross_attention_dim, the default of SeeSR's CrossAttn*Block2D / mid block (DAPE's width)
N, H, W, L, K = 2, 8, 8, 7, 5  # batch, latent size, text tokens, image tokens (DAPE gives 145)
TIMESTEPS = (999.0, 20.0)

SWIN_CONFIG: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 4,
    "in_chans": 3,
    "embed_dim": 24,
    "depths": [2, 2],
    "num_heads": [2, 4],
    "window_size": 4,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "drop_rate": 0.0,
    "drop_path_rate": 0.1,
    "ape": False,
    "patch_norm": True,
    "use_checkpoint": False,
}
# Keys of the official class that are not constructor arguments (recorded in swin/config.json).
SWIN_LORA: dict[str, Any] = {
    "lora_r": 8,  # hard-coded in swin_transformer_lora.WindowAttention: lora.MergedLinear(dim, 3*dim, r=8, ...)
    "lora_alpha": 1,  # loralib's default, not overridden
    "lora_scaling": 1 / 8,  # lora_alpha / lora_r
    "lora_enable": [True, False, True],  # q and v get LoRA, k does not
    "lora_dropout": 0.0,
}
SWIN_DROPPED = ("relative_position_index", "attn_mask")  # buffers RAM's loader deletes (recomputed by the class)

# DAPE's tag head (tagging/): configs/q2l_config.json at tiny widths. encoder_width is 512 as RAMLora sets it
# (ram_lora.py:132; image_proj gives 512 and wordvec_proj is Linear(512, hidden), both hard-coded). A width of 12 in
# 4 heads of 3 (not 3 of 4) catches a swap of heads and head width. The embeddings are built (and deleted, as
# del_selfattention does) but never used: their sizes only keep the constructors small.
TAG_HEAD_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 12,
    "initializer_range": 0.02,
    "intermediate_size": 24,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 16,
    "model_type": "bert",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 16,
    "encoder_width": 512,
    "add_cross_attention": True,
    "add_tag_cross_attention": False,
}
# RAM's tag_encoder (configs/med_config.json, encoder_width 512, ram_lora.py:111-114), at the tag head's widths as
# tie_encoder_decoder_weights needs; 3 layers, of which the lowest 2 share the tag head's weights.
TAG_ENCODER_CONFIG: dict[str, Any] = {**TAG_HEAD_CONFIG, "num_attention_heads": 6, "num_hidden_layers": 3}
TAG_INDICES = (0, 1, 2, 500, 1000, 2000, 2701, 3000, 4000, 4584)  # rows of ram/data/ram_tag_list.txt used as names
TAG_BATCH, TAG_TOKENS = 2, 7  # image embeddings (TAG_BATCH, TAG_TOKENS, 512) of the head-only io
LR_SIZE = (50, 37)  # (H, W) of the LR of the preprocessing and end-to-end io: odd, one side up, one down to 32
DAPE_SIZE = 384  # test_seesr.py:48: transforms.Resize((384, 384))
DAPE_STRIDE = 4  # the 384 x 384 output is kept at every 4th row and column (the whole would be 1.8 MB)
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # test_seesr.py:49
IMAGENET_STD = [0.229, 0.224, 0.225]
THRESHOLD_MARGIN = 1e-3  # least |sigmoid(logit) - threshold| of the fixtures: tags then agree within 1e-5 logits

BIAS_STD = 0.05  # biases ~ N(0, 0.05^2), norm weights 1 + N(0, 0.05^2); other weights N(0, 1 / fan_in)
HINT_GAIN = 1.7  # ~ 1 / rms(silu(N(0, 1))): keeps the ControlNet hint encoder's activations at unit scale
LORA_STD = 0.5  # LoRA A and B ~ N(0, 0.5^2): the q/v update (1/8) B A is then about half the weights' size


def load_official(seesr: Path) -> tuple[Any, Any, Any]:
    """Import SeeSR's UNet and ControlNet modules and RAM's LoRA Swin module from a checkout, without `ram`."""
    models_dir = seesr / "models"
    swin_file = seesr / "ram" / "models" / "swin_transformer_lora.py"
    for path in (models_dir / "unet_2d_condition.py", models_dir / "controlnet.py", swin_file):
        if not path.is_file():
            sys.exit(f"seesr_parity_fixtures: {path} not found (is --seesr a SeeSR checkout?)")
    package = types.ModuleType("seesr_models")
    package.__path__ = [str(models_dir)]  # the checkout's models/ has no __init__.py; relative imports need a package
    sys.modules["seesr_models"] = package
    unet_module = importlib.import_module("seesr_models.unet_2d_condition")
    controlnet_module = importlib.import_module("seesr_models.controlnet")
    spec = importlib.util.spec_from_file_location("seesr_swin_transformer_lora", swin_file)
    assert spec is not None and spec.loader is not None
    swin_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(swin_module)
    return unet_module, controlnet_module, swin_module


@torch.no_grad()
def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter with seeded noise, in named_parameters order (zero convs and LoRA B included).

    Weights ~ N(0, 1/fan_in) keep each layer's output at its input's scale, so that every path (the image
    cross-attention, LoRA, the ControlNet's hint encoder) visibly changes the outputs; the hint encoder, eight
    convolutions with a SiLU after all but the last and no skip, gets HINT_GAIN on top, else its output fades.
    """
    norm_types = (nn.GroupNorm, nn.LayerNorm)
    norm_weights = {id(m.weight) for m in module.modules() if isinstance(m, norm_types) and m.weight is not None}
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        if name.endswith(("lora_A", "lora_B")):
            p.copy_(LORA_STD * noise)
        elif id(p) in norm_weights:
            p.copy_(1.0 + BIAS_STD * noise)
        elif p.dim() >= 2:
            gain = HINT_GAIN if name.startswith("controlnet_cond_embedding.") else 1.0
            p.copy_(gain * noise / p[0].numel() ** 0.5)
        else:
            p.copy_(BIAS_STD * noise)


def contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}


def make_inputs(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """x (N, 4, H, W), t (N,), txt (N, L, 32), img (N, K, 512), cond (N, 3, 8H, 8W) in [0, 1]."""
    return {
        "x": torch.randn(N, 4, H, W, generator=generator),
        "t": torch.tensor(TIMESTEPS, dtype=torch.float32),
        "txt": torch.randn(N, L, UNET_CONFIG["cross_attention_dim"], generator=generator),
        "img": torch.randn(N, K, IMAGE_DIM, generator=generator),
        "cond": torch.rand(N, 3, 8 * H, 8 * W, generator=generator),
    }


@torch.no_grad()
def run_pair(unet: nn.Module, controlnet: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ControlNet then UNet, called as SeeSR's pipeline calls them (pipelines/pipeline_seesr.py, untiled branch)."""
    down, mid = controlnet(
        inputs["x"],
        inputs["t"],
        encoder_hidden_states=inputs["txt"],
        controlnet_cond=inputs["cond"],
        conditioning_scale=1.0,
        guess_mode=False,
        return_dict=False,
        image_encoder_hidden_states=inputs["img"],
    )
    eps = unet(
        inputs["x"],
        inputs["t"],
        encoder_hidden_states=inputs["txt"],
        down_block_additional_residuals=list(down),
        mid_block_additional_residual=mid,
        return_dict=False,
        image_encoder_hidden_states=inputs["img"],
    )[0]
    out = {f"down{i}": d for i, d in enumerate(down)}
    out["mid"] = mid
    out["eps"] = eps
    return out


def build_release(unet_module: Any, controlnet_module: Any, generator: torch.Generator) -> tuple[nn.Module, nn.Module]:
    unet = unet_module.UNet2DConditionModel(**UNET_CONFIG)
    # As train_seesr.py builds it (from_unet), then every weight replaced by independent noise.
    controlnet = controlnet_module.ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS, use_image_cross_attention=True
    )
    randomise(unet, generator)
    randomise(controlnet, generator)
    return unet.eval(), controlnet.eval()


def build_swin(swin_module: Any, generator: torch.Generator) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """RAM's LoRA Swin as DAPE builds it (ram_lora.RAMLora, vit='swin_l'); returns the module in eval mode
    (loralib merges (1/8) B A into qkv.weight on eval()) and its state dict taken before that merge."""
    swin = swin_module.SwinTransformer(**SWIN_CONFIG)
    swin.train()
    randomise(swin, generator)
    state = {k: v for k, v in swin.state_dict().items() if not k.endswith(SWIN_DROPPED)}
    state = {k: v.clone() for k, v in contiguous(state).items()}
    return swin.eval(), state


def reload_swin(swin_module: Any, folder: Path) -> nn.Module:
    config = json.loads((folder / "config.json").read_text())
    swin = swin_module.SwinTransformer(**{k: config[k] for k in SWIN_CONFIG})
    swin.train()  # load into unmerged LoRA layers, then let eval() merge as the official code does
    result = swin.load_state_dict(load_file(folder / "state.safetensors"), strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.endswith(SWIN_DROPPED)]
    if unexpected or missing:
        sys.exit(f"seesr_parity_fixtures: swin reload: missing {missing}, unexpected {unexpected}")
    return swin.eval()


def git_commit(seesr: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(seesr), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def versions() -> dict[str, str]:
    """The versions that made the fixtures, for the README."""
    found = {"python": sys.version.split()[0]}
    for name in ("torch", "diffusers", "timm", "loralib", "safetensors"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def shapes(tensors: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"`{k}` {tuple(v.shape)}" for k, v in tensors.items())


def write_readme(out: Path, seesr_commit: str, seed: int, io: dict, swin_io: dict, unet_keys: int,
                 controlnet_keys: int) -> None:
    found = versions()
    text = f"""# SeeSR parity fixtures

Made by `scripts/seesr_parity_fixtures.py --seed {seed}` (its docstring tells how to set up the reference
environment) from the official SeeSR code, github.com/cswry/SeeSR at commit `{seesr_commit}` (Apache-2.0), on the
CPU, with {", ".join(f"{k} {v}" for k, v in found.items())}.
The script reloaded every module from these files and reproduced every output below bit for bit.

Nothing here is trained: every parameter is seeded noise (weights N(0, 1/fan_in), times {HINT_GAIN} in the
ControlNet's controlnet_cond_embedding; biases std {BIAS_STD}; norm weights 1 + N(0, {BIAS_STD}^2); LoRA A and B
std {LORA_STD}; the ControlNet's zero convs and LoRA B too, so neither path is trivially zero).

## release/unet, release/controlnet
`config.json` + `diffusion_pytorch_model.safetensors`, written by `save_pretrained(safe_serialization=True)` of
SeeSR's `models/unet_2d_condition.py:UNet2DConditionModel` ({unet_keys} tensors) and
`models/controlnet.py:ControlNetModel` ({controlnet_keys} tensors; built with
`ControlNetModel.from_unet(unet, use_image_cross_attention=True)` as train_seesr.py does), both with
`use_image_cross_attention=True`. SeeSR's blocks (`models/unet_2d_blocks.py`) add a `Transformer2DModel` at
`image_attentions.j` after each `attentions.j`, with cross-attention width {IMAGE_DIM} (their hard-coded default
`image_cross_attention_dim=512`; the config does not carry it).

## io.safetensors
Inputs {shapes({k: io[k] for k in ("x", "t", "txt", "img", "cond")})}; `cond` in [0, 1].
Outputs {shapes({k: v for k, v in io.items() if k.startswith(("down", "mid", "eps"))})}.
As SeeSR's pipeline calls them (pipelines/pipeline_seesr.py):
`down, mid = controlnet(x, t, encoder_hidden_states=txt, controlnet_cond=cond, conditioning_scale=1.0,
return_dict=False, image_encoder_hidden_states=img)` gives `down0`... and `mid`;
`eps = unet(x, t, encoder_hidden_states=txt, down_block_additional_residuals=down,
mid_block_additional_residual=mid, return_dict=False, image_encoder_hidden_states=img)[0]`.
Attention ran through diffusers' AttnProcessor2_0 (torch's scaled_dot_product_attention). `t` is float32 (the
official modules cast timesteps to float before the sinusoid, so 999.0 and 999 embed alike). To reproduce these
bit for bit on the CPU, clone() the tensors that `safetensors.torch.load_file` returns: they are not 64-byte
aligned, which changes how the matmul kernels sum (differences near 1e-7).

## swin/
`ram/models/swin_transformer_lora.py:SwinTransformer`, the Swin that DAPE (`ram/models/ram_lora.py:RAMLora`,
vit='swin_l') builds: `qkv` is loralib `MergedLinear(dim, 3 dim, r=8, enable_lora=[True, False, True])`, LoRA on q
and v, lora_alpha 1, scaling 1/8, dropout 0. `eval()` merges the update into `qkv.weight` (dim = C of the stage,
r = 8): rows [0, dim) += B[:dim] @ A[:r] / 8 (q), rows [2 dim, 3 dim) += B[dim:] @ A[r:] / 8 (v), k untouched; the
fixture's `y` is from the merged weights (the unmerged train-mode path differs by ~2e-6).
`config.json`: the constructor arguments and the LoRA settings. `state.safetensors`: the module's state dict
before the merge (train mode), without the buffers `relative_position_index` and `attn_mask` (recomputed by the
class; RAM's checkpoint loader deletes them too); keys have no `visual_encoder.` prefix.
`io.safetensors`: {shapes(swin_io)}; `y = swin.eval()(x)`, the tokens DAPE feeds to `image_proj`:
`cat([avgpool over tokens, final-norm patch tokens])`, shape (N, 1 + L, C), L = (img_size / patch / 2^(stages-1))^2.
"""
    (out / "README.md").write_text(text)


# ------------------------------------------------------------------------------------------------------------------
# tagging/: DAPE's tag head, image_proj, the official tags and preprocessing.


def swin_width() -> int:
    """Token width out of the Swin of swin/ (SwinTransformer.num_features): embed_dim * 2^(stages - 1)."""
    return SWIN_CONFIG["embed_dim"] * 2 ** (len(SWIN_CONFIG["depths"]) - 1)


def load_ram_lora(seesr: Path) -> Any:
    """Import ram/models/ram_lora.py (RAMLora's methods, tie_encoder_decoder_weights, bert_lora's BertModel and
    BertConfig) as `seesr_ram_models.ram_lora`, without running ram/__init__.py."""
    models_dir = seesr / "ram" / "models"
    if not (models_dir / "ram_lora.py").is_file():
        sys.exit(f"seesr_parity_fixtures: {models_dir / 'ram_lora.py'} not found (is --seesr a SeeSR checkout?)")
    package = types.ModuleType("seesr_ram_models")
    package.__path__ = [str(models_dir)]  # relative imports (.bert_lora, .utils, ...) resolve inside ram/models
    sys.modules["seesr_ram_models"] = package
    return importlib.import_module("seesr_ram_models.ram_lora")


class RamParts(nn.Module):
    """The parts of ram_lora.RAMLora that generate_tag, generate_image_embeds and condition_forward use, registered
    in RAMLora.__init__'s order (visual_encoder, tag_encoder, tagging_head, label_embed, wordvec_proj, fc,
    image_proj): eval() merges the LoRA of each loralib layer in that order, and the tied weights get two merges."""


def build_ram_parts(ram_lora: Any, visual_encoder: nn.Module, tag_names: list[str], chinese: list[str],
                    generator: torch.Generator | None) -> RamParts:
    """As RAMLora.__init__ builds them (ram_lora.py:111-151), at TAG_HEAD_CONFIG's sizes: the tag head with
    del_selfattention applied, tied to a tag_encoder by the official tie_encoder_decoder_weights; then, when a
    generator is given, every new parameter replaced by seeded noise (label_embed ~ N(0, 1), the rest as
    `randomise`). Left in train mode (LoRA unmerged); visual_encoder is used as given."""
    parts = RamParts()
    parts.visual_encoder = visual_encoder
    encoder_config = ram_lora.BertConfig(**TAG_ENCODER_CONFIG)
    parts.tag_encoder = ram_lora.BertModel(config=encoder_config, add_pooling_layer=False)
    head_config = ram_lora.BertConfig(**TAG_HEAD_CONFIG)
    parts.tagging_head = ram_lora.BertModel(config=head_config, add_pooling_layer=False)
    parts.label_embed = nn.Parameter(torch.zeros(len(tag_names), head_config.encoder_width))
    parts.wordvec_proj = (nn.Linear(512, head_config.hidden_size) if head_config.hidden_size != 512
                          else nn.Identity())
    parts.fc = nn.Linear(head_config.hidden_size, 1)
    ram_lora.RAMLora.del_selfattention(parts)
    with contextlib.redirect_stdout(stdio.StringIO()):  # it prints one line per tied module
        ram_lora.tie_encoder_decoder_weights(parts.tag_encoder, parts.tagging_head, "", " ")
    parts.image_proj = nn.Linear(swin_width(), 512)
    parts.num_class = len(tag_names)
    parts.class_threshold = torch.ones(len(tag_names)) * 0.68  # replaced by the fixture's thresholds
    parts.delete_tag_index = []
    parts.tag_list = ram_lora.np.array(tag_names)
    parts.tag_list_chinese = ram_lora.np.array(chinese)
    if generator is not None:
        for module in (parts.tag_encoder, parts.tagging_head, parts.wordvec_proj, parts.fc, parts.image_proj):
            randomise(module, generator)
        with torch.no_grad():
            parts.label_embed.copy_(torch.randn(parts.label_embed.shape, generator=generator))
    return parts


def tagging_state(parts: RamParts) -> dict[str, torch.Tensor]:
    """The train-mode (unmerged) tensors the tag head and image_proj need, official names: tagging_head.* (LoRA
    included), label_embed, wordvec_proj.*, fc.*, image_proj.*, and the LoRA of the tag_encoder layers whose
    weights the tag head shares (tag_encoder.encoder.layer.i.crossattention.self.{query,key}.lora_{A,B})."""
    layers = TAG_HEAD_CONFIG["num_hidden_layers"]
    tied = tuple(f"tag_encoder.encoder.layer.{i}.crossattention.self.{p}.lora_{ab}"
                 for i in range(layers) for p in ("query", "key") for ab in "AB")
    keep = ("tagging_head.", "label_embed", "wordvec_proj.", "fc.", "image_proj.")
    state = {k: v for k, v in parts.state_dict().items() if k.startswith(keep) or k in tied}
    return {k: v.clone() for k, v in contiguous(state).items()}


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:  # as RAMLora.load_tag_list reads them (ram_lora.py:164-168)
        return f.read().splitlines()


def design_thresholds(probabilities: torch.Tensor) -> list[float]:
    """Per class, from its probabilities over every fixture row: class c % 3 == 0 fires in every row (threshold
    below all), == 1 in none (above all), == 2 in some (in the widest gap), each at least THRESHOLD_MARGIN away."""
    out = []
    for c in range(probabilities.shape[1]):
        p = sorted(probabilities[:, c].tolist())
        if c % 3 == 0:
            t = math.floor((p[0] - 0.02) * 100) / 100
        elif c % 3 == 1:
            t = math.ceil((p[-1] + 0.02) * 100) / 100
        else:
            gap, i = max((p[i + 1] - p[i], i) for i in range(len(p) - 1))
            t = round((p[i] + p[i + 1]) / 2, 3)
        if min(abs(v - t) for v in p) < THRESHOLD_MARGIN:
            sys.exit(f"seesr_parity_fixtures: class {c}: no threshold {THRESHOLD_MARGIN} away from {p}")
        out.append(t)
    return out


def official_preprocess(transforms: Any, x: torch.Tensor, size: int, antialias: bool | None) -> torch.Tensor:
    """test_seesr.py:47-50's ram_transforms at `size`: Resize((size, size)) then Normalize, on a tensor. antialias
    False is what torchvision 0.15 (SeeSR's torch 2.0.1) does for tensors ("warn" -> None -> False); None leaves
    the installed torchvision's default (True from 0.17 on)."""
    resize = (transforms.Resize((size, size)) if antialias is None
              else transforms.Resize((size, size), antialias=antialias))
    return transforms.Compose([resize, transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])(x)


@torch.no_grad()
def run_tagging(ram_lora: Any, parts: RamParts, embeds: torch.Tensor, lq: torch.Tensor) -> dict[str, Any]:
    """Official outputs on the head-only input `embeds` (visual_encoder and image_proj swapped for identities) and on
    the preprocessed LR `lq` (the whole DAPE): logits by RAMLora.condition_forward(only_feature=False), tags by
    RAMLora.generate_tag (English list), embeddings by RAMLora.generate_image_embeds."""
    method = ram_lora.RAMLora
    out: dict[str, Any] = {"embeds_lr": method.generate_image_embeds(parts, lq)}
    out["logits_lr"] = method.condition_forward(parts, lq, only_feature=False)[1]
    out["tags_lr"] = list(method.generate_tag(parts, lq)[0])
    visual_encoder, image_proj = parts.visual_encoder, parts.image_proj
    parts.visual_encoder, parts.image_proj = nn.Identity(), nn.Identity()
    try:
        out["logits"] = method.condition_forward(parts, embeds, only_feature=False)[1]
        out["tags"] = list(method.generate_tag(parts, embeds)[0])
    finally:
        parts.visual_encoder, parts.image_proj = visual_encoder, image_proj
    return out


def write_tagging(seesr: Path, out: Path, seed: int, swin_module: Any) -> None:
    """tagging/: see write_tagging_readme. Uses its own generator (seed + 1), so the other fixtures do not depend on
    it; the Swin is the one of swin/ (reloaded from its files)."""
    from torchvision import transforms

    ram_lora = load_ram_lora(seesr)
    generator = torch.Generator().manual_seed(seed + 1)
    all_names = read_lines(seesr / "ram" / "data" / "ram_tag_list.txt")
    all_chinese = read_lines(seesr / "ram" / "data" / "ram_tag_list_chinese.txt")
    names = [all_names[i] for i in TAG_INDICES]
    chinese = [all_chinese[i] for i in TAG_INDICES]
    swin = reload_swin(swin_module, out / "swin")
    parts = build_ram_parts(ram_lora, swin, names, chinese, generator)
    state = tagging_state(parts)
    parts.eval()  # loralib merges: the tag head's own LoRA, and the tied tag_encoder's into the shared weights

    embeds = torch.randn(TAG_BATCH, TAG_TOKENS, 512, generator=generator)
    lr = torch.randint(0, 256, (1, 3, *LR_SIZE), generator=generator).float() / 255  # as ToTensor of a uint8 image
    size = SWIN_CONFIG["img_size"]
    pre = {
        "lr": lr,
        "y": official_preprocess(transforms, lr, size, antialias=False),
        "y_antialias": official_preprocess(transforms, lr, size, antialias=None),
        "y384": official_preprocess(transforms, lr, DAPE_SIZE, antialias=False)[..., ::DAPE_STRIDE, ::DAPE_STRIDE],
    }
    # TAD-SeeSR pipelines/pipeline_tadsr.py (steps 749/499/249): F.interpolate(image, size=(384, 384),
    # mode='bicubic'), then ram_normalize(ram_values[i]) per image; here at `size`.
    bicubic = F.interpolate(lr, size=(size, size), mode="bicubic")
    normalize = transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    for i in range(bicubic.shape[0]):
        bicubic[i] = normalize(bicubic[i])
    pre["y_bicubic"] = bicubic
    lq = pre["y"]

    first = run_tagging(ram_lora, parts, embeds, lq)
    probabilities = torch.sigmoid(torch.cat([first["logits"], first["logits_lr"]]))
    lines = [f"{t}" for t in design_thresholds(probabilities)]
    class_threshold = torch.ones(len(names)) * 0.68  # as ram_lora.py:155-162 builds it from the file's lines
    for key, value in enumerate(float(s.strip()) for s in lines):
        class_threshold[key] = value
    parts.class_threshold = class_threshold
    fired_everywhere = [c for c in range(len(names)) if c % 3 == 0]
    parts.delete_tag_index = [fired_everywhere[1]]  # deleted: a class that fires in every row
    result = run_tagging(ram_lora, parts, embeds, lq)
    if not all(result["tags"]) or len(set(result["tags"])) < 2 or not result["tags_lr"][0]:
        sys.exit(f"seesr_parity_fixtures: tag fixtures not varied enough: {result['tags']} {result['tags_lr']}")

    folder = out / "tagging"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "tagging_head": TAG_HEAD_CONFIG,
        "tag_encoder": TAG_ENCODER_CONFIG,
        "num_classes": len(names),
        "tag_indices": list(TAG_INDICES),
        "delete_tag_index": parts.delete_tag_index,
        "lora_r": 8,  # bert_lora.py:163-170: lora.Linear(..., r=8) for query and key
        "lora_alpha": 1,  # loralib's default, not overridden
        "lora_scaling": 1 / 8,
        "tied_tag_encoder_layers": list(range(TAG_HEAD_CONFIG["num_hidden_layers"])),
        "image_proj": [parts.image_proj.in_features, parts.image_proj.out_features],
        "swin": "../swin (config.json, state.safetensors)",
        "input_size": size,
        "lr_size": list(LR_SIZE),
        "dape_size": DAPE_SIZE,
        "dape_stride": DAPE_STRIDE,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "tag_list.txt").write_text("\n".join(names), encoding="utf-8")
    (folder / "thresholds.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "tags.json").write_text(json.dumps({"tags": result["tags"], "tags_lr": result["tags_lr"]}, indent=2,
                                                 ensure_ascii=False) + "\n", encoding="utf-8")
    save_file(state, folder / "state.safetensors")
    io = contiguous({"embeds": embeds, "logits": result["logits"], "class_threshold": class_threshold,
                     "lq": lq, "embeds_lr": result["embeds_lr"], "logits_lr": result["logits_lr"]})
    save_file(io, folder / "io.safetensors")
    save_file(contiguous(pre), folder / "preprocess.safetensors")
    write_tagging_readme(folder, io, pre, state, result)

    # Reload: fresh official modules from the written files (random tag_encoder weights beyond the tied ones, which
    # the tag head never sees), rerun, compare bit for bit.
    parts2 = build_ram_parts(ram_lora, reload_swin(swin_module, out / "swin"), read_lines(folder / "tag_list.txt"),
                             chinese, None)
    loaded = parts2.load_state_dict({k: v.clone() for k, v in load_file(folder / "state.safetensors").items()},
                                    strict=False)
    wanted = ("tagging_head.", "label_embed", "wordvec_proj.", "fc.", "image_proj.")
    if loaded.unexpected_keys or [k for k in loaded.missing_keys if k.startswith(wanted)]:
        sys.exit(f"seesr_parity_fixtures: tagging reload: {loaded}")
    parts2.eval()
    saved = {k: v.clone() for k, v in load_file(folder / "io.safetensors").items()}
    threshold2 = torch.ones(len(names)) * 0.68
    with open(folder / "thresholds.txt", encoding="utf-8") as f:
        for key, value in enumerate(float(s.strip()) for s in f):
            threshold2[key] = value
    parts2.class_threshold = threshold2
    parts2.delete_tag_index = json.loads((folder / "config.json").read_text())["delete_tag_index"]
    again = run_tagging(ram_lora, parts2, saved["embeds"], saved["lq"])
    bad = [k for k in ("logits", "logits_lr", "embeds_lr") if not torch.equal(again[k], saved[k])]
    if again["tags"] != result["tags"] or again["tags_lr"] != result["tags_lr"]:
        bad.append("tags")
    if not torch.equal(threshold2, saved["class_threshold"]):
        bad.append("class_threshold")
    if bad:
        sys.exit(f"seesr_parity_fixtures: tagging reload does not reproduce {bad}")


def write_tagging_readme(folder: Path, io: dict, pre: dict, state: dict, result: dict) -> None:
    size = SWIN_CONFIG["img_size"]
    layers = TAG_HEAD_CONFIG["num_hidden_layers"]
    text = f"""# DAPE tag head and preprocessing fixtures

Made by `scripts/seesr_parity_fixtures.py` (with the files one folder up; same environment, seed + 1 for
everything here) from cswry/SeeSR's `ram/models/ram_lora.py` and `ram/models/bert_lora.py`. `RAMLora` itself is
never built (its constructor downloads bert-base-uncased): its methods `generate_tag`, `condition_forward` and
`generate_image_embeds` ran on a module holding just the parts they use, built and tied as `RAMLora.__init__`
does. Every parameter is seeded noise (as one folder up; `label_embed` ~ N(0, 1); LoRA B is not zero).

## config.json, tag_list.txt, thresholds.txt
The tag head's BERT config (`configs/q2l_config.json` at tiny widths: {TAG_HEAD_CONFIG['hidden_size']} wide,
{TAG_HEAD_CONFIG['num_attention_heads']} heads, intermediate {TAG_HEAD_CONFIG['intermediate_size']}, {layers}
layers, encoder_width 512 as RAMLora sets it), the tag_encoder's (`med_config.json`'s role, the same widths,
{TAG_ENCODER_CONFIG['num_hidden_layers']} layers), {len(TAG_INDICES)} classes named by rows {list(TAG_INDICES)} of
`ram/data/ram_tag_list.txt` (tag_list.txt, read as RAM reads it: `f.read().splitlines()`), their thresholds
(thresholds.txt, read as RAM reads `ram_tag_list_threshold.txt`: 0.68, then `float(line.strip())` per line, into
a float32 tensor) and `delete_tag_index`.
Thresholds were chosen from the official probabilities of the three rows below: classes 0, 3, 6, 9 fire in every
row, 1, 4, 7 in none, 2, 5, 8 in some; every probability is at least {THRESHOLD_MARGIN} from its threshold.
`delete_tag_index` clears one class that fires everywhere.

## state.safetensors
The train-mode (LoRA not merged) tensors, official names: `tagging_head.encoder.layer.i.*` (crossattention
`self.query` / `self.key` are loralib `Linear(r=8)`: `weight`, `bias`, `lora_A` (8, in), `lora_B` (out, 8);
`self.value`, `output.dense`, `output.LayerNorm`, `intermediate.dense`, `output.*`), `label_embed`,
`wordvec_proj.*`, `fc.*`, `image_proj.*` (Linear({swin_width()}, 512) after the Swin of ../swin), and
`tag_encoder.encoder.layer.i.crossattention.self.{{query,key}}.lora_{{A,B}}` for i < {layers}.
`RAMLora.__init__` ties (`tie_encoder_decoder_weights(self.tag_encoder, self.tagging_head, '', ' ')`) the
`weight` and `bias` of the tag_encoder's lowest {layers} layers to the tag head's, not their LoRA; `eval()` merges,
in module order, `W += lora_B @ lora_A * 1/8` for the tag_encoder's layers and then for the tag head's, so the
shared query / key weights the tag head uses are `W + (B_enc A_enc + B_tag A_tag) / 8`.

## io.safetensors
{shapes(io)}.
`logits` = `condition_forward(embeds, only_feature=False)[1]` with `visual_encoder` and `image_proj` replaced by
identities: the tag head on image embeddings `embeds`. `class_threshold` is the float32 tensor RAM compares with.
`lq` = the preprocessed LR below (`preprocess.safetensors` `y`), `embeds_lr` = `generate_image_embeds(lq)`
(Swin of ../swin, then `image_proj`), `logits_lr` = `condition_forward(lq, only_feature=False)[1]`.

## tags.json
`tags` = `generate_tag(embeds)[0]` (identity encoder, as above), `tags_lr` = `generate_tag(lq)[0]`: the official
strings (`sigmoid(logits) > class_threshold`, `delete_tag_index` cleared, names by class index, ", "-joined):
{json.dumps(result['tags'])} and {json.dumps(result['tags_lr'])}.

## preprocess.safetensors
{shapes(pre)}. `lr` is a {LR_SIZE[0]}x{LR_SIZE[1]} LR as ToTensor gives it (uint8 / 255). As `test_seesr.py:47-50`
(`transforms.Compose([Resize((S, S)), Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])` on the
tensor) with the torchvision of this environment ({metadata.version('torchvision')}) and:
`y`: S = {size}, `antialias=False`, which is what SeeSR's torchvision 0.15 (torch 2.0.1) does for a tensor (its
`antialias="warn"` default means None, i.e. False; torchvision 0.15 cannot be installed here, so this emulates it
by passing the value it used); `y_antialias`: S = {size}, torchvision's current default (antialias True since
0.17); `y384`: S = {DAPE_SIZE}, `antialias=False`, every {DAPE_STRIDE}th row and column (`[..., ::{DAPE_STRIDE},
::{DAPE_STRIDE}]`); `y_bicubic`: S = {size}, TAD-SeeSR's multi-step re-embedding (`pipelines/pipeline_tadsr.py`:
`F.interpolate(image, size=(S, S), mode='bicubic')`, then `Normalize` per image).
"""
    (folder / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seesr", type=Path, required=True, help="a SeeSR checkout (github.com/cswry/SeeSR)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)  # constructors draw default inits; every parameter is overwritten afterwards
    unet_module, controlnet_module, swin_module = load_official(args.seesr.resolve())
    generator = torch.Generator().manual_seed(args.seed)

    unet, controlnet = build_release(unet_module, controlnet_module, generator)
    inputs = make_inputs(generator)
    io = contiguous({**inputs, **run_pair(unet, controlnet, inputs)})
    release = args.out / "release"
    unet.save_pretrained(release / "unet", safe_serialization=True)
    controlnet.save_pretrained(release / "controlnet", safe_serialization=True)
    save_file(io, args.out / "io.safetensors")

    swin, swin_state = build_swin(swin_module, generator)
    x = torch.randn(N, 3, SWIN_CONFIG["img_size"], SWIN_CONFIG["img_size"], generator=generator)
    with torch.no_grad():
        swin_io = contiguous({"x": x, "y": swin(x)})
    swin_dir = args.out / "swin"
    swin_dir.mkdir(parents=True, exist_ok=True)
    swin_config = {
        **SWIN_CONFIG,
        **SWIN_LORA,
        "class": "ram/models/swin_transformer_lora.py:SwinTransformer",
        "output": "tokens (N, 1 + L, C): avgpool over the final-norm tokens, then those L patch tokens "
        "(SwinTransformer.forward with idx_to_group_img=None); DAPE applies image_proj to this",
        "state": "train-mode state dict, LoRA not merged; eval() merges it into qkv.weight, which y used: "
        "rows [0, dim) += lora_scaling * lora_B[:dim] @ lora_A[:r] (q), rows [2 dim, 3 dim) += "
        "lora_scaling * lora_B[dim:] @ lora_A[r:] (v)",
        "dropped_buffers": list(SWIN_DROPPED),
    }
    (swin_dir / "config.json").write_text(json.dumps(swin_config, indent=2) + "\n")
    save_file(swin_state, swin_dir / "state.safetensors")
    save_file(swin_io, swin_dir / "io.safetensors")
    write_readme(args.out, git_commit(args.seesr), args.seed, io, swin_io, len(unet.state_dict()),
                 len(controlnet.state_dict()))

    # Reload everything from the written files into fresh instances and rerun: must be bit-exact. Tensors from
    # load_file are not 64-byte aligned, and on the CPU that changes how the matmul kernels sum (differences near
    # 1e-7): clone them first.
    saved = {k: v.clone() for k, v in load_file(args.out / "io.safetensors").items()}
    unet2 = unet_module.UNet2DConditionModel.from_pretrained(release / "unet").eval()
    controlnet2 = controlnet_module.ControlNetModel.from_pretrained(release / "controlnet").eval()
    again = run_pair(unet2, controlnet2, {k: saved[k] for k in inputs})
    swin_saved = {k: v.clone() for k, v in load_file(swin_dir / "io.safetensors").items()}
    with torch.no_grad():
        again_y = reload_swin(swin_module, swin_dir)(swin_saved["x"])
    bad = [k for k, v in again.items() if not torch.equal(v, saved[k])]
    if not torch.equal(again_y, swin_saved["y"]):
        bad.append("swin y")
    if bad:
        sys.exit(f"seesr_parity_fixtures: reload does not reproduce {bad}")
    write_tagging(args.seesr.resolve(), args.out, args.seed, swin_module)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB); reloaded outputs reproduce bit for bit")


if __name__ == "__main__":
    main()
