"""Parameters and forward FLOPs of SeeSR / TAD-SeeSR per component, at full size, counted on the meta device.

tadsr's modules at the released shapes (``seesr_speed.py``'s configs: SD-2-base's UNet with SeeSR's image
cross-attention, the ControlNet built from it, SD-2-base's VAE and OpenCLIP-H text encoder, DAPE's Swin-L at 384
with image_proj and the 4585-class tag head) are built on the meta device (no memory, no weights) and each forward
is counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention, 2 FLOPs per
multiply-add; norms, activations and softmax are not counted) for one image, LR ``--lr`` (128) -> 4 x ``--lr``.

Per image:
  TAD-SeeSR: DAPE + tag head + text encoder (the prompt) + VAE encode + 1 x (ControlNet + UNet) + VAE decode
  SeeSR:     DAPE + tag head + text encoder x 2 (prompt, negative) + VAE encode
             + ``--steps`` (50) x 2 (classifier-free guidance: one batch of 2) x (ControlNet + UNet) + VAE decode

Usage: python benchmarks/seesr_cost.py [--lr 128] [--steps 50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from seesr_speed import LABELS, SD2_TEXT, SD2_UNET, SD2_VAE, _residual_shapes  # noqa: E402


def count(call) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        call()
    return counter.get_total_flops()


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    import diffusers
    import transformers

    from tadsr.seesr.dape import DAPE_SWIN_L, DapeImageEncoder
    from tadsr.seesr.nets import add_image_attention
    from tadsr.seesr.tags import DAPE_TAG_HEAD, TagHead

    hr, latent = 4 * args.lr, args.lr // 2
    rows: dict[str, tuple[int, int]] = {}
    with torch.device("meta"):
        text = torch.empty(1, 77, 1024)
        img = torch.empty(1, 145, 512)
        z = torch.empty(1, 4, latent, latent)
        cond = torch.empty(1, 3, hr, hr)
        t = torch.tensor(999)

        dape = DapeImageEncoder.from_config(DAPE_SWIN_L).eval()
        rows["dape"] = (params(dape), count(lambda: dape(torch.empty(1, 3, 384, 384))))
        head = TagHead(DAPE_TAG_HEAD).eval()
        rows["tag_head"] = (params(head), count(lambda: head(img)))
        clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD2_TEXT)).eval()
        ids = torch.zeros(1, 77, dtype=torch.long)
        rows["text_encoder"] = (params(clip), count(lambda: clip(ids)))
        vae = diffusers.AutoencoderKL(**SD2_VAE).eval()
        rows["vae_encode"] = (params(vae.encoder) + params(vae.quant_conv),
                              count(lambda: vae.encode(cond).latent_dist.mean))
        unet = diffusers.UNet2DConditionModel(**SD2_UNET).eval()
        controlnet = diffusers.ControlNetModel.from_unet(unet, load_weights_from_unet=False).eval()
        control_image = add_image_attention(controlnet)
        with control_image.attending(img):
            rows["controlnet"] = (params(controlnet), count(lambda: controlnet(
                z, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)))
        unet_image = add_image_attention(unet)
        shapes = _residual_shapes(latent)
        down = [torch.empty(*s) for s in shapes[:-1]]
        mid = torch.empty(*shapes[-1])
        with unet_image.attending(img):
            rows["unet"] = (params(unet), count(lambda: unet(
                z, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False)))
        image_attention = sum(params(m) for m in unet_image.modules) + sum(params(m) for m in control_image.modules)
        rows["vae_decode"] = (params(vae.decoder) + params(vae.post_quant_conv),
                              count(lambda: vae.decode(z, return_dict=False)))

    g = {name: flops / 1e9 for name, (_, flops) in rows.items()}
    print(f"SeeSR / TAD-SeeSR at LR {args.lr} -> {hr} (latent {latent}), one image; GFLOP = 1e9 FLOPs "
          "(2 per multiply-add; torch.utils.flop_counter, meta device)")
    print(f"{'component':28s} | {'params M':>9s} | {'GFLOP / call':>12s}")
    for name, (p, _) in rows.items():
        print(f"{LABELS[name]:28s} | {p / 1e6:9.1f} | {g[name]:12.1f}")
    total_params = sum(p for name, (p, _) in rows.items() if name != "vae_decode" and name != "vae_encode")
    total_params += params(vae)
    print(f"{'all parameters (VAE once)':28s} | {total_params / 1e6:9.1f} |")
    print(f"  of which SeeSR's image cross-attention (UNet + ControlNet): {image_attention / 1e6:.1f} M")
    fixed = g["dape"] + g["tag_head"] + g["vae_encode"] + g["vae_decode"]
    pair = g["controlnet"] + g["unet"]
    tad = fixed + g["text_encoder"] + pair
    seesr = fixed + 2 * g["text_encoder"] + args.steps * 2 * pair
    print(f"\nTAD-SeeSR, 1 step, no guidance:               {tad:10.1f} GFLOP = {tad / 1e3:.2f} TFLOP")
    print(f"SeeSR, {args.steps} steps x 2 (CFG) x (ControlNet + UNet): {seesr:10.1f} GFLOP = {seesr / 1e3:.2f} TFLOP")
    print(f"ratio SeeSR / TAD-SeeSR: {seesr / tad:.1f}")
    print("share of TAD-SeeSR's step: " + ", ".join(f"{LABELS[n]} {100 * g[n] / tad:.0f}%" for n in rows))


if __name__ == "__main__":
    main()
