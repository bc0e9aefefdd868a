"""Write tiny pipeline parity fixtures by running the OFFICIAL SeeSR pipeline (cswry/SeeSR
``pipelines/pipeline_seesr.py``) on tiny random parts with every random draw injected.

Two runs, both through ``StableDiffusionControlNetPipeline.__call__`` of the checkout, the way ``test_seesr.py``
calls it (``start_point='lr'``, ``start_steps=999``, the ``_init_tiled_vae`` hooks installed as at
``test_seesr.py:105``; all sizes are below its tile sizes, so the hooks call the plain forward):

  seesr/       two DDPM steps with classifier-free guidance 5.5 and SeeSR's negative prompt;
  tad_seesr/   TAD-SeeSR's one step: guidance 0 (no CFG), timestep 999, ``z0 = (z - sqrt(1 - ab) eps) / sqrt(ab)``.
               SeeSR's pipeline runs its scheduler's own timesteps; TAD-SR's ``pipelines/pipeline_tadsr.py``
               hard-codes ``timesteps = torch.tensor([999, 749, 499, 249])`` and with ``num_inference_steps == 1``
               replaces the scheduler step by its ``utils/scheduling_ddpm.py`` ``get_z0`` and breaks. So for this
               run the scheduler INSTANCE is patched: ``set_timesteps`` leaves ``timesteps = [999]`` and ``step``
               returns ``get_z0(sample, eps, t)`` (written here after TAD-SR's formula). Everything else (prompt
               encoding, image preparation, VAE encoding, add_noise, ControlNet + UNet, decoding) is SeeSR's code,
               which TAD-SR's pipeline repeats line for line.

How the random draws are injected (the official pipeline has only ``latents=`` for one of them):
  * the start noise: ``latents=`` (``prepare_latents``, pipeline_seesr.py:706-724; init_noise_sigma is 1);
  * the VAE posterior sample (``self.vae.encode(image*2-1).latent_dist.sample()``, pipeline_seesr.py:989):
    ``diffusers.models.vae.DiagonalGaussianDistribution.sample`` is replaced, for the call, by
    ``mean + std * posterior_noise`` (diffusers 0.21's own formula, models/vae.py:659-665), the one injected noise
    broadcast over the batch (under CFG the image batch is the LR twice; only [0:1] is used, :993);
  * the DDPM variance noise of each step (``randn_tensor`` in ``DDPMScheduler.step``, schedulers/
    scheduling_ddpm.py:436-447): ``diffusers.schedulers.scheduling_ddpm.randn_tensor`` is replaced by a function
    that returns the injected step noises in order (and fails if the count or shape is wrong).
  The final latents are taken through the pipeline's ``callback`` (called after every step, :1191-1194).

The LR preparation of ``test_seesr.py:195-206`` (PIL, default resample = bicubic) is run here with the same calls
on a 12 x 19 LR with ``process_size`` 64 (so the short-side rule scales it to 16 px, x4, and the width is floored
to a multiple of 8 by a PIL resize, 100 -> 96) and on a second, even LR that needs no resize; its output is the
pipeline's ``image`` argument. The prompt is built with the f-strings of ``test_seesr.py:142,185`` from fixed tags
(DAPE is checked elsewhere: tests/test_seesr_tags.py); the image embeddings are random (1, 5, 512).

Run with the reference venv (see scripts/seesr_parity_fixtures.py for how it was made):

    HF_HUB_OFFLINE=1 /work/seesr-ref/venv/bin/python scripts/seesr_pipeline_fixtures.py \
        --seesr /work/seesr-ref/SeeSR --out tests/data/seesr_pipeline --seed 0

Parts: unet/ and controlnet/ are read from tests/data/seesr_parity/release (written by seesr_parity_fixtures.py)
with the checkout's own classes; vae/ (a 4-level AutoencoderKL, 8 channels), text_encoder/ (a 2-layer
CLIPTextModel, 32 wide), tokenizer/ (a CLIPTokenizer over the 256 byte symbols and no merges, padded with "!" as
SD-2's) and scheduler/ (SD-2-base's scheduler values) are made here from the seed and saved with save_pretrained.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "tests" / "data" / "seesr_parity" / "release"
PROCESS_SIZE = 64  # test_seesr.py's --process_size (512 there): 64 keeps the fixtures small
UPSCALE = 4
TAGS = "cat, grass"
USER_PROMPT = ""  # test_seesr.py --prompt default
ADDED_PROMPT = "clean, high-resolution, 8k"  # test_seesr.py --added_prompt default
TAD_ADDED_PROMPT = "clean, high-resolution, 8k, extremely detailed, best quality, sharp"  # test_tadsr.py
NEGATIVE_PROMPT = "dotted, noise, blur, lowres, smooth"
GUIDANCE = 5.5
STEPS = 2
SCHEDULER = {"_class_name": "DDPMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "clip_sample": False, "num_train_timesteps": 1000,
             "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "trained_betas": None}  # SD-2-base's scheduler/scheduler_config.json values


def import_official(seesr: Path) -> dict[str, Any]:
    """The checkout's pipeline, UNet, ControlNet and colour fix, imported by path (``ram`` never imported)."""
    sys.path.insert(0, str(seesr))  # pipeline_seesr.py does `from utils.vaehook import ...`
    package = types.ModuleType("seesr_models")
    package.__path__ = [str(seesr / "models")]
    sys.modules["seesr_models"] = package
    modules = {"unet": importlib.import_module("seesr_models.unet_2d_condition"),
               "controlnet": importlib.import_module("seesr_models.controlnet")}
    for name, path in (("pipeline", "pipelines/pipeline_seesr.py"), ("color", "utils/wavelet_color_fix.py")):
        spec = importlib.util.spec_from_file_location(f"seesr_{name}", seesr / path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


def byte_symbols() -> list[str]:
    """GPT-2 / CLIP's byte -> printable symbol table (the 256 base tokens of a byte-level BPE vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(printable, codes, strict=True))]


def make_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!",
                              model_max_length=77)
    tokenizer.save_pretrained(str(folder))
    return CLIPTokenizer.from_pretrained(str(folder))


def make_text_encoder(folder: Path, vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", projection_dim=32,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1)
    model = CLIPTextModel(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    return CLIPTextModel.from_pretrained(str(folder)).eval()


def make_vae(folder: Path) -> Any:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32).eval()
    with torch.no_grad():  # a visible posterior variance: the injected posterior noise must matter
        vae.quant_conv.bias[4:] += 1.0
    vae.save_pretrained(str(folder), safe_serialization=True)
    return AutoencoderKL.from_pretrained(str(folder)).eval()


def prepare_lr(lr: Image.Image, process_size: int) -> Image.Image:
    """test_seesr.py:195-206, the same PIL calls (``Image.resize``'s default resample, bicubic)."""
    ori_width, ori_height = lr.size
    image = lr
    if ori_width < process_size // UPSCALE or ori_height < process_size // UPSCALE:
        scale = (process_size // UPSCALE) / min(ori_width, ori_height)
        image = image.resize((int(scale * ori_width), int(scale * ori_height)))
    image = image.resize((image.size[0] * UPSCALE, image.size[1] * UPSCALE))
    return image.resize((image.size[0] // 8 * 8, image.size[1] // 8 * 8))


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


class Injected:
    """The patches of the module docstring, active inside ``with``."""

    def __init__(self, posterior_noise: torch.Tensor, step_noises: list[torch.Tensor]) -> None:
        self.posterior_noise, self.step_noises = posterior_noise, list(step_noises)
        self.latents: list[torch.Tensor] = []

    def __enter__(self) -> Injected:
        import diffusers.models.vae as vae_module
        import diffusers.schedulers.scheduling_ddpm as ddpm_module

        self._saved = (vae_module.DiagonalGaussianDistribution.sample, ddpm_module.randn_tensor)
        noise = self.posterior_noise

        def sample(dist: Any, generator: Any = None) -> torch.Tensor:
            return dist.mean + dist.std * noise.to(dist.mean.dtype).expand_as(dist.mean)

        def randn_tensor(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None,
                         layout: Any = None) -> torch.Tensor:
            if not self.step_noises:
                raise RuntimeError("the scheduler drew more step noises than were injected")
            drawn = self.step_noises.pop(0)
            if tuple(drawn.shape) != tuple(shape):
                raise RuntimeError(f"step noise {tuple(drawn.shape)} injected, {tuple(shape)} drawn")
            return drawn.to(dtype)

        vae_module.DiagonalGaussianDistribution.sample = sample
        ddpm_module.randn_tensor = randn_tensor
        return self

    def __exit__(self, *exc: Any) -> None:
        import diffusers.models.vae as vae_module
        import diffusers.schedulers.scheduling_ddpm as ddpm_module

        vae_module.DiagonalGaussianDistribution.sample, ddpm_module.randn_tensor = self._saved
        if exc[0] is None and self.step_noises:
            raise RuntimeError(f"{len(self.step_noises)} injected step noises were not drawn")

    def callback(self, i: int, t: Any, latents: torch.Tensor) -> None:
        self.latents.append(latents.detach().clone())


def tad_scheduler(scheduler: Any) -> Any:
    """The scheduler instance patched for TAD-SeeSR's one step (module docstring)."""

    def set_timesteps(num_inference_steps: int, device: Any = None) -> None:
        scheduler.num_inference_steps = num_inference_steps
        scheduler.timesteps = torch.tensor([999], dtype=torch.long)  # pipeline_tadsr.py: timesteps[0] = 999

    def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor]:
        # TAD-SR utils/scheduling_ddpm.py get_z0: (noisy - sqrt(1 - ab_t) * eps) / sqrt(ab_t), ab in the sample's dtype
        ab = scheduler.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)[timestep]
        return ((sample - (1 - ab) ** 0.5 * model_output) / ab ** 0.5,)

    scheduler.set_timesteps = set_timesteps
    scheduler.step = step
    return scheduler


def run(official: dict[str, Any], parts: dict[str, Any], scheduler: Any, image: Image.Image, prompt: str,
        guidance: float, steps: int, embeds: torch.Tensor, start: torch.Tensor, posterior: torch.Tensor,
        step_noises: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One official pipeline call with the injected draws -> (final latents, image (pt output, [0, 1]))."""
    pipe = official["pipeline"].StableDiffusionControlNetPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        feature_extractor=None, unet=parts["unet"], controlnet=parts["controlnet"], scheduler=scheduler,
        safety_checker=None, requires_safety_checker=False)
    pipe._init_tiled_vae(encoder_tile_size=1024, decoder_tile_size=224)  # test_seesr.py:105 defaults
    pipe.set_progress_bar_config(disable=True)
    width, height = image.size
    with Injected(posterior, step_noises) as injected, torch.no_grad():
        out = pipe(prompt, image, num_inference_steps=steps, generator=None, height=height, width=width,
                   guidance_scale=guidance, negative_prompt=NEGATIVE_PROMPT, conditioning_scale=1.0,
                   latents=start, start_point="lr", start_steps=999, ram_encoder_hidden_states=embeds, output_type="pt",
                   callback=injected.callback, callback_steps=1).images
    return injected.latents[-1], out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seesr", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "seesr_pipeline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    official = import_official(args.seesr.resolve())
    from diffusers import DDPMScheduler

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    tokenizer = make_tokenizer(out / "tokenizer")
    parts = {
        "tokenizer": tokenizer,
        "text_encoder": make_text_encoder(out / "text_encoder", len(tokenizer)),
        "vae": make_vae(out / "vae"),
        "unet": official["unet"].UNet2DConditionModel.from_pretrained(str(RELEASE / "unet")).eval(),
        "controlnet": official["controlnet"].ControlNetModel.from_pretrained(str(RELEASE / "controlnet")).eval(),
    }
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")

    lr = (torch.rand(12, 19, 3, generator=gen) * 255).round().to(torch.uint8)
    lr_even = (torch.rand(6, 10, 3, generator=gen) * 255).round().to(torch.uint8)
    image = prepare_lr(Image.fromarray(lr.numpy()), PROCESS_SIZE)
    image_even = prepare_lr(Image.fromarray(lr_even.numpy()), 8)  # no short-side resize, 40 x 24: no floor
    w, h = image.size
    latent = (1, 4, h // 8, w // 8)
    embeds = torch.randn(1, 5, 512, generator=gen)
    tensors: dict[str, torch.Tensor] = {
        "lr": lr.permute(2, 0, 1)[None].contiguous(), "cond": to_tensor(image),
        "lr_even": lr_even.permute(2, 0, 1)[None].contiguous(), "cond_even": to_tensor(image_even),
        "image_embeds": embeds,
    }
    prompts = {"seesr": f"{TAGS}, {USER_PROMPT}," + ADDED_PROMPT,  # test_seesr.py:142, :185
               "tad_seesr": f"{TAGS}, {USER_PROMPT}," + TAD_ADDED_PROMPT}
    for name, key in (("seesr", "seesr"), ("tad_seesr", "tad_seesr")):
        ids = tokenizer(prompts[key], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        tensors[f"{name}.prompt_ids"] = ids
        with torch.no_grad():
            tensors[f"{name}.prompt_embeds"] = parts["text_encoder"](ids)[0]
    neg_ids = tokenizer(NEGATIVE_PROMPT, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
    tensors["negative_ids"] = neg_ids
    with torch.no_grad():
        tensors["negative_embeds"] = parts["text_encoder"](neg_ids)[0]

    # (a) TAD-SeeSR's one step
    start, posterior = torch.randn(latent, generator=gen), torch.randn(latent, generator=gen)
    z0, hr = run(official, parts, tad_scheduler(DDPMScheduler.from_config(SCHEDULER)), image, prompts["tad_seesr"],
                 0.0, 1, embeds, start, posterior, [])
    tensors |= {"tad_seesr.start_noise": start, "tad_seesr.posterior_noise": posterior, "tad_seesr.latents": z0,
                "tad_seesr.image": hr}
    # (b) SeeSR: two DDPM steps with CFG
    start, posterior = torch.randn(latent, generator=gen), torch.randn(latent, generator=gen)
    steps = [torch.randn(latent, generator=gen) for _ in range(STEPS)]
    z, hr = run(official, parts, DDPMScheduler.from_config(SCHEDULER), image, prompts["seesr"], GUIDANCE, STEPS,
                embeds, start, posterior, steps)
    tensors |= {"seesr.start_noise": start, "seesr.posterior_noise": posterior, "seesr.step_noises": torch.stack(steps),
                "seesr.latents": z, "seesr.image": hr}
    # AdaIN colour fix (test_seesr.py:230 -> utils/wavelet_color_fix.py adaptive_instance_normalization), on floats
    tensors["adain"] = official["color"].adaptive_instance_normalization(hr, tensors["cond"]).clamp(0, 1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "io.safetensors"))
    settings = {"tags": TAGS, "user_prompt": USER_PROMPT, "added_prompt": ADDED_PROMPT,
                "tad_added_prompt": TAD_ADDED_PROMPT, "negative_prompt": NEGATIVE_PROMPT, "prompts": prompts,
                "guidance": GUIDANCE, "steps": STEPS, "process_size": PROCESS_SIZE, "process_size_even": 8,
                "seed": args.seed}
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {out}: {', '.join(f'{k} {tuple(v.shape)}' for k, v in tensors.items())}")


if __name__ == "__main__":
    main()
