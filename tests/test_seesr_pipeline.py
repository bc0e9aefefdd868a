"""SeeSR's and TAD-SeeSR's sampling (``tadsr.seesr.pipeline``) against the official pipeline.

The fixtures (tests/data/seesr_pipeline, written by ``scripts/seesr_pipeline_fixtures.py`` with cswry/SeeSR's own
``pipelines/pipeline_seesr.py`` under diffusers 0.21; its docstring says how every random draw was injected) hold
tiny parts (the UNet and ControlNet of tests/data/seesr_parity, a tiny VAE, CLIP text encoder, tokenizer and
SD-2-base's scheduler config), the inputs and the official outputs of TAD-SeeSR's one step and of two guided DDPM
steps. tadsr runs the same parts under diffusers 0.42 / transformers 5 with the same draws.

Tolerance: 1e-5 on images in [0, 1] and on latents relative to their scale (max |diff| / max |latent|): the two
stacks sum in other orders (attention kernels, the text encoder), and TAD-SeeSR's one step divides by
sqrt(ab_999) = 0.068, which scales any float32 rounding of ε by 15.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "data" / "seesr_pipeline"
RELEASE = Path(__file__).parent / "data" / "seesr_parity" / "release"
TOL = 1e-5


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "io.safetensors"))


@pytest.fixture(scope="module")
def settings() -> dict:
    return json.loads((FIXTURES / "settings.json").read_text())


def tiny_dape():
    from tadsr.seesr.dape import DapeImageEncoder, SwinConfig
    from tadsr.seesr.tags import Dape, TagHead, TagHeadConfig

    swin = SwinConfig(img_size=32, patch_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4)
    torch.manual_seed(0)
    encoder = DapeImageEncoder.from_config(swin, out_dim=512)
    head = TagHead(TagHeadConfig(num_classes=3, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                                 encoder_width=512))
    return Dape(encoder, head, ["cat", "grass", "sky"], [0.0, 0.0, 2.0]).eval()  # tags: "cat, grass"


@pytest.fixture(scope="module")
def parts():
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from tadsr.seesr.nets import load_network
    from tadsr.seesr.parts import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, SeeSRParts, SeeSRSettings

    unet, unet_image = load_network(RELEASE / "unet", "unet")
    controlnet, controlnet_image = load_network(RELEASE / "controlnet", "controlnet")
    config = json.loads((FIXTURES / "scheduler" / "scheduler_config.json").read_text())
    return SeeSRParts(
        unet=unet, unet_image=unet_image, controlnet=controlnet, controlnet_image=controlnet_image,
        vae=AutoencoderKL.from_pretrained(str(FIXTURES / "vae")).eval(),
        text_encoder=CLIPTextModel.from_pretrained(str(FIXTURES / "text_encoder")).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(FIXTURES / "tokenizer")),
        scheduler=DDPMScheduler.from_config(config), dape=tiny_dape(),
        settings=SeeSRSettings("seesr", DEFAULT_PROMPT, DEFAULT_NEGATIVE_PROMPT, 2, 5.5, process_size=0),
        folder=FIXTURES)  # process_size 0: the pipeline on the given images, without the scripts' short-side rule


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


def test_the_prompt_is_the_official_text(settings: dict) -> None:
    from tadsr.seesr.parts import TAD_SEESR_PROMPT
    from tadsr.seesr.pipeline import seesr_prompt

    assert seesr_prompt(settings["tags"]) == settings["prompts"]["seesr"] == "cat, grass, ,clean, high-resolution, 8k"
    assert seesr_prompt(settings["tags"], TAD_SEESR_PROMPT) == settings["prompts"]["tad_seesr"]


def test_text_encoding_is_the_official(parts, io) -> None:
    from tadsr.seesr.pipeline import encode_text, tokenize

    for name in ("seesr", "tad_seesr"):
        prompt = json.loads((FIXTURES / "settings.json").read_text())["prompts"][name]
        assert torch.equal(tokenize(parts.tokenizer, prompt), io[f"{name}.prompt_ids"])
        assert max_diff(encode_text(parts.text_encoder, parts.tokenizer, prompt), io[f"{name}.prompt_embeds"]) <= TOL
    assert torch.equal(tokenize(parts.tokenizer, "dotted, noise, blur, lowres, smooth"), io["negative_ids"])


def test_the_lr_preparation_is_pils(io, settings) -> None:
    """The short-side rule, x4 and the floor to 8 (a 100 -> 96 resize): bit-exact with quantize, < 3 levels
    without (8-bit rounding after each of the three resizes)."""
    from tadsr.seesr.pipeline import prepare_lr, processing_sizes

    assert processing_sizes(12, 19, 64) == ((16, 25), (64, 100), (64, 96))
    for lr, cond, size in ((io["lr"], io["cond"], settings["process_size"]),
                           (io["lr_even"], io["cond_even"], settings["process_size_even"])):
        lr01 = lr.float() / 255
        assert torch.equal(prepare_lr(lr01, process_size=size), cond)
        assert max_diff(prepare_lr(lr01, process_size=size, quantize=False), cond) <= 3 / 255


def test_pil_resize_matches_pillow_both_ways() -> None:
    import numpy as np
    from PIL import Image

    from tadsr.seesr.pipeline import pil_resize

    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(1, 3, 13, 22, generator=gen) * 255).round()
    image = Image.fromarray(x[0].permute(1, 2, 0).to(torch.uint8).numpy())
    for w, h in ((57, 40), (9, 7), (22, 31)):
        ref = torch.from_numpy(np.array(image.resize((w, h)), dtype=np.float32)).permute(2, 0, 1)[None] / 255
        assert torch.equal(pil_resize(x / 255, (h, w), quantize=True), ref)
        channel = Image.fromarray(x[0, 0].numpy().astype(np.float32), mode="F").resize((w, h))
        ref_f = torch.from_numpy(np.array(channel)) / 255
        assert max_diff(pil_resize(x / 255, (h, w), clip=False)[0, 0], ref_f) <= 1e-6


def test_tad_seesr_one_step_is_the_official(parts, io, settings) -> None:
    """End to end from the uint8 LR and the prompt's text (only DAPE's embeddings are given)."""
    from tadsr.seesr.pipeline import decode, encode_text, prepare_lr, tad_seesr_latents

    cond = prepare_lr(io["lr"].float() / 255, process_size=settings["process_size"])
    text = encode_text(parts.text_encoder, parts.tokenizer, settings["prompts"]["tad_seesr"])
    z0 = tad_seesr_latents(parts, cond, posterior_noise=io["tad_seesr.posterior_noise"],
                           start_noise=io["tad_seesr.start_noise"], prompt_embeds=text,
                           image_embeds=io["image_embeds"])
    ref = io["tad_seesr.latents"]
    assert max_diff(z0, ref) / ref.abs().max().item() <= TOL
    with torch.no_grad():
        image = (decode(parts.vae, z0) + 1) / 2
    assert max_diff(image, io["tad_seesr.image"]) <= TOL


def test_seesr_two_guided_ddpm_steps_are_the_official(parts, io) -> None:
    from tadsr.seesr.pipeline import decode, seesr_latents

    z = seesr_latents(parts, io["cond"], steps=2, guidance=5.5, prompt_embeds=io["seesr.prompt_embeds"],
                      negative_embeds=io["negative_embeds"], image_embeds=io["image_embeds"],
                      posterior_noise=io["seesr.posterior_noise"], start_noise=io["seesr.start_noise"],
                      step_noises=io["seesr.step_noises"])
    ref = io["seesr.latents"]
    assert max_diff(z, ref) / ref.abs().max().item() <= TOL
    with torch.no_grad():
        image = (decode(parts.vae, z) + 1) / 2
    assert max_diff(image, io["seesr.image"]) <= TOL


def test_the_timesteps_are_diffusers(parts) -> None:
    from diffusers import DDPMScheduler

    from tadsr.seesr.pipeline import DDPMConfig, ddpm_timesteps

    for spacing in ("leading", "trailing", "linspace"):
        scheduler = DDPMScheduler.from_config({**parts.scheduler.config, "timestep_spacing": spacing})
        for steps in (1, 2, 50, 7):
            scheduler.set_timesteps(steps)
            assert ddpm_timesteps(DDPMConfig.of(scheduler), steps) == scheduler.timesteps.tolist()
    assert ddpm_timesteps(DDPMConfig.of(parts.scheduler), 50)[:2] == [981, 961]


def test_adain_is_the_official(io) -> None:
    from tadsr.seesr.pipeline import adain_color_fix

    assert max_diff(adain_color_fix(io["seesr.image"], io["cond"]), io["adain"]) <= 1e-6


def test_the_backend_untiled_is_the_one_step_and_deterministic(parts) -> None:
    from tadsr.inference.tiling import tiled_super_resolve
    from tadsr.seesr.pipeline import SeeSRBackend, adain_color_fix, encode_text, pil_resize, tad_seesr_one_step

    backend = SeeSRBackend(parts, variant="tad-seesr")
    gen = torch.Generator().manual_seed(1)
    lr = torch.rand(1, 3, 12, 20, generator=gen) * 2 - 1
    out = tiled_super_resolve(backend, lr, tile=0, seed=7)
    assert out.shape == (1, 3, 48, 80) and backend.last_prompt == "cat, grass, ," + backend.added_prompt
    assert torch.equal(out, tiled_super_resolve(backend, lr, tile=0, seed=7))
    noise = backend.draw_noise(12, 20, 7)
    assert noise.shape == (2, 1, 4, 6, 10)
    lr01 = (lr + 1) / 2
    cond = pil_resize(lr01, (48, 80))
    with torch.no_grad():
        embeds, _ = parts.dape(lr01)
    hr = tad_seesr_one_step(parts, cond, posterior_noise=noise[0], start_noise=noise[1],
                            prompt_embeds=encode_text(parts.text_encoder, parts.tokenizer, backend.last_prompt),
                            image_embeds=embeds)
    assert torch.equal(out, adain_color_fix((hr + 1) / 2, cond) * 2 - 1)


def test_the_backend_conditions_once_per_image_and_tiles(parts) -> None:
    from tadsr.inference.tiling import tiled_super_resolve
    from tadsr.seesr.pipeline import SeeSRBackend

    backend = SeeSRBackend(parts, steps=1, tags="")
    seen: list[tuple[int, ...]] = []
    begin = backend.begin_image
    backend.begin_image = lambda lr: (seen.append(tuple(lr.shape)), begin(lr))[1]  # type: ignore[method-assign]
    lr = torch.rand(1, 3, 15, 22, generator=torch.Generator().manual_seed(2)) * 2 - 1
    out = tiled_super_resolve(backend, lr, tile=12, overlap=2, seed=3, batch_size=8)  # 4 tiles, one batch
    assert seen == [(1, 3, 15, 22)] and out.shape == (1, 3, 60, 88) and torch.isfinite(out).all()
    assert backend.draw_noise(16, 22, 3).shape == (3, 1, 4, 8, 11)
    assert backend.last_prompt == ", ," + backend.added_prompt


def test_the_backend_maps_foreign_errors(parts) -> None:
    from tadsr.errors import BackendError, ConfigError
    from tadsr.seesr.pipeline import SeeSRBackend

    backend = SeeSRBackend(parts, variant="tad-seesr")
    with pytest.raises(BackendError, match="seesr_pipeline"):
        backend.run(torch.zeros(1, 3, 8, 8), backend.draw_noise(6, 6, 0))  # noise of another size: torch raises
    with pytest.raises(ConfigError, match="one step"):
        SeeSRBackend(parts, variant="tad-seesr", steps=4)


def test_the_backend_runs_under_autocast(parts) -> None:
    """``--fp16`` / ``--bf16``: the networks under autocast, the output float32, finite, near the float32 run."""
    from tadsr.inference.tiling import tiled_super_resolve
    from tadsr.seesr.pipeline import SeeSRBackend

    lr = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(4)) * 2 - 1
    ref = tiled_super_resolve(SeeSRBackend(parts, variant="tad-seesr"), lr, tile=0, seed=1)
    out = tiled_super_resolve(SeeSRBackend(parts, variant="tad-seesr", dtype=torch.float16), lr, tile=0, seed=1)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert 0 < max_diff(out, ref) < 0.1
