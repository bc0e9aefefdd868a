"""What TAD-SR distillation of an SD-based teacher costs: a measured tiny CPU run, and the paper's scale by count.

1. A tiny random StableDiffusionUpscalePipeline (the tests' shapes, built here, nothing downloaded) distilled by
   ``DistillTrainer`` on this CPU for ``--steps`` iterations, GT 64, batch 2, the teacher's 4-step targets computed
   on the fly: median seconds per iteration (after the first) and the process's peak resident memory.
2. The released SD x4 upscaler's UNet shape (diffusers' ``stabilityai/stable-diffusion-x4-upscaler`` config) at the
   paper's GT 512 (a 128 x 128 latent), and SD-2-base's UNet (SeeSR's base, a 64 x 64 latent), both built on the
   meta device (no weights): parameters and forward FLOPs counted by
   ``torch.utils.flop_counter``; from them, per iteration, the FLOPs of one student forward + backward (3 forwards),
   HSD's two teacher forwards, the discriminator's two down-block passes (about half a forward each) and the
   backward through the fake features, and the memory of full fine-tuning with AdamW in fp32 (16 bytes per
   trainable parameter) plus the frozen teacher in bf16. The teacher's samples are precomputed (the teacher cache),
   as the authors do.

Usage: python benchmarks/sd_distill_cost.py [--steps 6] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from tadsr.devices import peak_memory_mib

X4_UNET = dict(sample_size=128, in_channels=7, out_channels=4, layers_per_block=2,
               block_out_channels=(256, 512, 512, 1024),
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
               cross_attention_dim=1024, attention_head_dim=8, use_linear_projection=True,
               only_cross_attention=(True, True, True, False), num_class_embeds=1000)
# SD-2-base's UNet (the base of SeeSR, the paper's SD teacher; without SeeSR's ControlNet and image attention)
SD2_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)


def tiny_run(work: Path, steps: int) -> tuple[float, float]:
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from conftest import pipeline_dir
    from tadsr.training.distill import DistillTrainer
    from tadsr.training.families import distill_config

    class Factory:
        def mktemp(self, name: str) -> Path:
            path = work / name
            path.mkdir(parents=True, exist_ok=True)
            return path

    folder = pipeline_dir.__wrapped__(Factory())
    photos = work / "photos"
    photos.mkdir(exist_ok=True)
    y, x = np.mgrid[0:80, 0:96] / 40.0
    for i in range(3):
        img = np.stack([np.sin(3 * x + i), np.cos(4 * y - i), np.sin(2 * (x + y) + i)], axis=2) * 0.4 + 0.5
        Image.fromarray((img * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    config, _ = distill_config(folder, preset="tiny", data_path=str(photos), steps=steps,
                               overrides=["run.batch_size=2", "data.gt_size=64", "family.teacher_steps=4",
                                          "run.val_every=1000", "run.save_every=1000", "run.log_every=1"])
    trainer = DistillTrainer(config, work / "run", teacher=folder, show_progress=False)
    trainer.run()
    times = [json.loads(line)["sec_per_it"] for line in (work / "run" / "log.jsonl").read_text().splitlines()
             if "sec_per_it" in line][1:]
    peak = peak_memory_mib(torch.device("cpu"))  # the process's peak resident set
    return statistics.median(times), peak


def sd_scale(config: dict, channels: int, size: int) -> dict[str, float]:
    """Parameters, forward FLOPs at a ``size``-pixel latent and the per-iteration estimate (module docstring)."""
    import diffusers

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**config)
        params = sum(p.numel() for p in unet.parameters())
        x = torch.empty(1, channels, size, size)
        context = torch.empty(1, 77, 1024)
        labels = torch.tensor([20]) if config.get("num_class_embeds") else None
        with FlopCounterMode(display=False) as counter:
            unet(x, torch.tensor([999]), encoder_hidden_states=context, class_labels=labels)
    forward = counter.get_total_flops()
    per_iteration = forward * (3 + 2 + 1 + 1.5)  # student fwd+bwd, HSD x2, D's passes, backward through fake
    memory_gb = (params * 16 + params * 2) / 1e9  # AdamW fp32 student (weights, grads, 2 moments) + bf16 teacher
    return {"unet_parameters_M": params / 1e6, "forward_TFLOP": forward / 1e12,
            "iteration_TFLOP": per_iteration / 1e12, "weights_and_optimizer_GB": memory_gb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp())
    seconds, peak = tiny_run(work, args.steps)
    print(f"tiny SD teacher, this CPU ({torch.get_num_threads()} threads): {seconds:.2f} s / iteration "
          f"(median of {args.steps - 1}), peak resident memory {peak:.0f} MiB")
    for label, config, channels, size in (("SD x4 upscaler UNet, GT 512 (latent 128)", X4_UNET, 7, 128),
                                          ("SD-2-base UNet, GT 512 (latent 64)", SD2_UNET, 4, 64)):
        for key, value in sd_scale(config, channels, size).items():
            print(f"{label}: {key} = {value:.2f}")


if __name__ == "__main__":
    main()
