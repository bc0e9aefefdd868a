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
After writing, it reloads every module from the written files in fresh instances and checks that the outputs
reproduce bit for bit (it exits non-zero otherwise).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
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
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB); reloaded outputs reproduce bit for bit")


if __name__ == "__main__":
    main()
