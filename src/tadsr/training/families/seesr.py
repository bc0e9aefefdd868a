"""The SeeSR family: a SeeSR folder (``tadsr convert seesr``) as a ``DistillTeacher`` (paper Appendix B: TAD-SeeSR).

Written for tadsr from the paper and a reading of the authors' training code (LearningHx/TAD-SR
``TAD-SeeSR/train_tadsr.py`` and ``train.sh``; nothing copied; docs/seesr-distill.md lists each choice and where
tadsr's default differs from that code):

* the process: SD-2-base's VP latent process (``tadsr.diffusion.vp``) with SeeSR's ε-prediction, the network being
  the ControlNet then the UNet (``SeeSRNetworks``), conditioned by ``SeeSRCondition``: the x4 bicubic condition
  image, the prompt's text embeddings (DAPE's tags + the folder's prompt) and DAPE's image embeddings;
* the student: a copy of both networks (``make_student``) of which ``family.trainable`` learns; it runs TAD-SeeSR's
  one step: the start latent (``family.student_start``: the LR image's VAE posterior sample, as at inference, or
  the GT's, the authors') noised to t = 999, ε once, z0 = (z - sqrt(1 - ab) ε) / sqrt(ab);
* L_distill's target: SeeSR's own sampler (``family.teacher_steps`` DDPM steps with guidance ``family.guidance``)
  from the LR image and the same start noise, as the authors' precomputed SeeSR outputs;
* the time-aware discriminator's features: the UNet's down-path skip activations after each down block's last
  layer before its downsampler, with the ControlNet's residuals added (the authors' ``only_fea`` outputs 2, 5, 8,
  11: 320/640/1280/1280 channels at 1/8, 1/16, 1/32, 1/64 of the image for SD-2-base);
* the student file: a TAD-SeeSR folder (``tadsr.seesr.convert.write_student``) that ``tadsr upscale --model``
  runs in one step.

Batches hold, beside ``lq`` and ``gt`` in [-1, 1]: ``z_gt`` and ``z_lr`` (the VAE posterior samples x 0.18215 of
the GT and of the x4 bicubic LR), ``noise`` (the start noise), ``z_tch``, ``prompt_embeds`` (N, L, D),
``image_embeds`` (N, K, 512) and, with ``teacher_condition = gt``, ``gt_image_embeds``: every one of them drawn or
computed once per pair and kept by the teacher cache (``distill.teacher_cache``), so that a cached run calls no
VAE, DAPE, text encoder nor sampler.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from tadsr.devices import autocast
from tadsr.diffusion.vp import to_eps, to_x0, vp_forward
from tadsr.errors import ConfigError
from tadsr.fileio import content_digest
from tadsr.sd.process import down_block_outputs
from tadsr.seesr.nets import image_attention_of
from tadsr.seesr.parts import SeeSRParts
from tadsr.training.config import SeeSRFamily

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections ``trainable = lora`` adapts


class SeeSRCondition(NamedTuple):
    """What SeeSR's networks are conditioned on: ``image`` (N, 3, H, W) in [0, 1], the ControlNet's condition
    image at the output size; ``prompt_embeds`` (N, L, D), the text encoder's; ``image_embeds`` (N, K, 512),
    DAPE's."""

    image: Tensor
    prompt_embeds: Tensor
    image_embeds: Tensor


class SeeSRNetworks(nn.Module):
    """SeeSR's ControlNet and UNet as one module (the teacher's network, and the student's): ``forward`` is ε at
    (z_t, t) (pipeline_seesr.py:1032-1061: the ControlNet's residuals added to the UNet's skips, conditioning scale
    1), ``features`` the discriminator's input (module docstring)."""

    def __init__(self, unet: nn.Module, controlnet: nn.Module) -> None:
        super().__init__()
        self.unet, self.controlnet = unet, controlnet

    def _residuals(self, z: Tensor, t: Tensor, cond: SeeSRCondition) -> tuple[Any, Tensor]:
        with image_attention_of(self.controlnet).attending(cond.image_embeds.to(z.dtype)):
            return self.controlnet(z, t, encoder_hidden_states=cond.prompt_embeds.to(z.dtype),
                                   controlnet_cond=cond.image.to(z.dtype), conditioning_scale=1.0, guess_mode=False,
                                   return_dict=False)

    def forward(self, z: Tensor, t: Tensor, cond: SeeSRCondition) -> Tensor:
        """ε (N, C, h, w) at latents ``z`` and timesteps ``t`` (N,)."""
        down, mid = self._residuals(z, t, cond)
        with image_attention_of(self.unet).attending(cond.image_embeds.to(z.dtype)):
            return self.unet(z, t, encoder_hidden_states=cond.prompt_embeds.to(z.dtype),
                             down_block_additional_residuals=down, mid_block_additional_residual=mid,
                             return_dict=False)[0]

    @property
    def feature_channels(self) -> list[int]:
        return list(self.unet.config.block_out_channels)

    def features(self, z: Tensor, t: Tensor, cond: SeeSRCondition) -> list[Tensor]:
        """One activation per UNet down block (N, C_k, h / 2^k, w / 2^k): its last layer's output before its
        downsampler, plus the ControlNet's residual for that skip. The UNet stops after its down blocks."""
        down, _ = self._residuals(z, t, cond)

        def forward() -> None:
            with image_attention_of(self.unet).attending(cond.image_embeds.to(z.dtype)):
                self.unet(z, t, encoder_hidden_states=cond.prompt_embeds.to(z.dtype), return_dict=False)

        # each block's skip activations (its downsampler's last)
        outputs = [output[1] for output in down_block_outputs(self.unet, forward)]
        features, index = [], 1  # the skips: conv_in's output, then each block's (ControlNet's order too)
        for block, skips in zip(self.unet.down_blocks, outputs, strict=True):
            last = len(block.resnets) - 1
            features.append(skips[last] + down[index + last].to(skips[last].dtype))
            index += len(skips)
        return features


class SeeSRProcess:
    """``TeacherProcess`` of SeeSR: the VP forward process on SD-2-base's ``alphas_cumprod`` (T,), x0_hat from the
    networks' ε (``tadsr.diffusion.vp``), the features of ``SeeSRNetworks.features``."""

    def __init__(self, networks: SeeSRNetworks, alphas_cumprod: Tensor) -> None:
        self.networks, self.alphas_cumprod = networks, alphas_cumprod

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def q_sample(self, z_0: Tensor, t: Tensor, noise: Tensor, cond: Any) -> Tensor:
        return vp_forward(self.alphas_cumprod, z_0, t, noise)

    def x0_hat(self, z_t: Tensor, t: Tensor, cond: SeeSRCondition) -> Tensor:
        return to_x0(self.alphas_cumprod, z_t, t, self.networks(z_t, t, cond).to(z_t.dtype), "epsilon")

    def to_eps(self, z_t: Tensor, x0: Tensor, t: Tensor, cond: Any) -> Tensor:
        return to_eps(self.alphas_cumprod, z_t, t, x0)

    def encoder_features(self, z_t: Tensor, t: Tensor, cond: SeeSRCondition) -> list[Tensor]:
        return self.networks.features(z_t, t, cond)


# --- what the student trains --------------------------------------------------------------------------------------

def is_trained(name: str, trainable: str) -> bool:
    """Whether the student's parameter ``name`` (a ``SeeSRNetworks`` key) learns under ``family.trainable``:
    ``image-attention``, the image cross-attention of both networks and the ControlNet's conditioning embedding
    (train_tadsr.py's ``requires_grad`` choice); ``full``, all; ``lora``, only the LoRA factors (``add_lora``)."""
    if trainable == "full":
        return True
    if trainable == "lora":
        return ".lora_down." in name or ".lora_up." in name
    return ".image_attentions." in name or name.startswith("controlnet.controlnet_cond_embedding.")


def _lora_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """W x + B (A x): the LoRA factors a Linear carries (a function of the module, so that copies run their own)."""
    return output + module.lora_up(module.lora_down(args[0]))


def add_lora(unet: nn.Module, rank: int, seed: int = 0) -> int:
    """A LoRA of ``rank`` on every attention projection of ``unet`` (``LORA_TARGETS`` of each diffusers
    ``Attention``: self, text and image cross-attention), in place: ``lora_down`` (rank, in) uniform in
    ±1/sqrt(in) (nn.Linear's default range) from a generator seeded with ``seed`` (every process of a run draws the
    same), ``lora_up`` (out, rank) zero, so the network is unchanged until trained (Hu et al. 2021, LoRA §4.1;
    scale alpha / rank = 1). The factors are the Linear's submodules (keys ``....to_q.lora_down.weight``);
    ``merge_lora`` folds them in. Returns the number of adapted layers."""
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for name, module in list(unet.named_modules()):
        if isinstance(module, nn.Linear) and any(name == t or name.endswith(f".{t}") for t in LORA_TARGETS):
            bound = module.in_features ** -0.5
            down = torch.empty(rank, module.in_features).uniform_(-bound, bound, generator=generator)
            module.lora_down = skip_init(nn.Linear, module.in_features, rank, bias=False).to(module.weight)
            module.lora_up = skip_init(nn.Linear, rank, module.out_features, bias=False).to(module.weight)
            with torch.no_grad():  # no draw from the global generator
                module.lora_down.weight.copy_(down)
                module.lora_up.weight.zero_()
            module.register_forward_hook(_lora_hook)
            count += 1
    return count


def merge_lora(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with each layer's LoRA factors folded into its weight (W + B A, in float32) and dropped."""
    out = {k: v for k, v in state.items() if ".lora_down." not in k and ".lora_up." not in k}
    for key in [k for k in state if k.endswith(".lora_down.weight")]:
        base = key[: -len(".lora_down.weight")]
        weight = out[f"{base}.weight"]
        delta = state[f"{base}.lora_up.weight"].float() @ state[key].float()
        out[f"{base}.weight"] = (weight.float() + delta).to(weight.dtype)
    return out


# --- the family ---------------------------------------------------------------------------------------------------

class SeeSRTeacher:
    """``DistillTeacher`` of a SeeSR folder (module docstring)."""

    kind = "seesr"
    default_hsd_t_max = 881  # with distill.hsd_t_min 20 and hsd_t_step 20: the authors' {20, 40, ..., 880}
    student_model = None  # the student's architecture is the folder's networks, recorded in the student folder
    student_suffix = ""  # the student is a folder: RUN_DIR/final

    def __init__(self, path: Path, family: SeeSRFamily, device: torch.device, amp: torch.dtype | None) -> None:
        from tadsr.seesr.folder import load_seesr
        from tadsr.seesr.pipeline import encode_text

        self.path, self.family, self.device, self.amp = path, family, device, amp
        self.recipe(path)
        self.parts: SeeSRParts = load_seesr(path, device)
        for module in (self.parts.unet, self.parts.controlnet, self.parts.vae, self.parts.text_encoder,
                       self.parts.dape):
            module.eval().requires_grad_(False)
        self.network = SeeSRNetworks(self.parts.unet, self.parts.controlnet)
        acp = self.parts.scheduler.alphas_cumprod.to(torch.float64)
        self.process = SeeSRProcess(self.network, acp)
        self.timestep = self.parts.settings.timestep
        self.scale = 4  # SeeSR's x4 (test_seesr.py --upscale)
        self.vae_factor = 2 ** (len(self.parts.vae.config.block_out_channels) - 1)
        self.gt_multiple = self.vae_factor * 2 ** (len(self.parts.unet.config.block_out_channels) - 1)
        self.feature_channels = self.network.feature_channels
        self.model_channels = self.feature_channels[0]
        self.negative_embeds = (encode_text(self.parts.text_encoder, self.parts.tokenizer,
                                            self.parts.settings.negative_prompt)
                                if family.guidance > 1.0 else None)

    @staticmethod
    def recipe(path: Path) -> tuple[None, str, str]:
        """No tadsr model; the ``seesr`` preset (TAD-SeeSR's recipe). A folder that is not a SeeSR teacher (a
        TAD-SeeSR student, a damaged index) is one line."""
        from tadsr.seesr.folder import read_settings

        settings = read_settings(path)
        if settings.variant != "seesr":
            raise ConfigError(f"{path}: a {settings.variant} folder (one step, the distilled student); the teacher is "
                              "SeeSR itself (tadsr convert seesr --variant seesr)")
        return None, "seesr", (f"the seesr preset's recipe (TAD-SeeSR's train.sh) for {path}; pass --preset or "
                               "--config for another")

    # --- the student ------------------------------------------------------------------------------------------

    def make_student(self) -> nn.Module:
        """A copy of the teacher's networks whose ``family.trainable`` parameters learn; the frozen ones are the
        teacher's own tensors (shared, never copied: they never change), LoRA factors new (``add_lora``)."""
        trainable = self.family.trainable
        shared = {id(p): p for name, p in self.network.named_parameters() if not is_trained(name, trainable)}
        student = copy.deepcopy(self.network, shared)
        if trainable == "lora":
            add_lora(student.unet, self.family.lora_rank)
        for name, p in student.named_parameters():
            p.requires_grad_(is_trained(name, trainable))
        return student.train()

    def _image(self, x: Tensor) -> Tensor:
        """The x4 bicubic (Pillow's, in float) of (N, 3, h, w) images in [-1, 1], in [0, 1]: the ControlNet's
        condition (``tadsr.seesr.pipeline.pil_resize``)."""
        from tadsr.seesr.pipeline import pil_resize

        x01 = ((x.float() + 1) / 2).clamp(0, 1)
        return pil_resize(x01, (x.shape[-2] * self.scale, x.shape[-1] * self.scale))

    @torch.no_grad()
    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """DAPE's image embeddings and the prompt's text embeddings of (N, 3, h, w) images in [-1, 1]."""
        from tadsr.seesr.pipeline import encode_text, seesr_prompt

        parts = self.parts
        image_embeds, tags = parts.dape(((x.float() + 1) / 2).clamp(0, 1))
        prompts = [seesr_prompt(tag, parts.settings.prompt) for tag in tags]
        return image_embeds.float(), encode_text(parts.text_encoder, parts.tokenizer, prompts).float()

    @torch.no_grad()
    def targets(self, lq: Tensor, gt: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Per pair (module docstring): the embeddings, the posterior draws of the LR and GT latents, the start
        noise and SeeSR's sample from it (its per-step draws too), every draw from ``generator``."""
        from tadsr.seesr.pipeline import encode_lr, seesr_latents

        parts = self.parts
        image = self._image(lq)
        image_embeds, prompt_embeds = self._embed(lq)
        shape = (lq.shape[0], int(parts.vae.config.latent_channels), *(s // self.vae_factor for s in gt.shape[-2:]))

        def draw() -> Tensor:
            return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

        lr_noise, gt_noise, noise = draw(), draw(), draw()
        steps = [draw() for _ in range(self.family.teacher_steps)]
        out = {"image_embeds": image_embeds, "prompt_embeds": prompt_embeds}
        if self.family.teacher_condition == "gt":
            out["gt_image_embeds"] = self._embed(gt)[0]
        with autocast(self.device, self.amp):
            out["z_lr"] = encode_lr(parts.vae, image, lr_noise).float()
            out["z_gt"] = encode_lr(parts.vae, ((gt.float() + 1) / 2).clamp(0, 1), gt_noise).float()
            out["z_tch"] = seesr_latents(parts, image, steps=self.family.teacher_steps, guidance=self.family.guidance,
                                         prompt_embeds=prompt_embeds, negative_embeds=self.negative_embeds,
                                         image_embeds=image_embeds, posterior_noise=lr_noise, start_noise=noise,
                                         step_noises=steps).float()
        return {**out, "noise": noise}

    def condition(self, batch: dict[str, Tensor]) -> SeeSRCondition:
        """The teacher's conditioning (``family.teacher_condition``): the LR's x4 bicubic and DAPE embeddings, or
        the GT image and its DAPE embeddings (the authors'); the prompt's embeddings either way."""
        if self.family.teacher_condition == "gt":
            return SeeSRCondition(((batch["gt"].float() + 1) / 2).clamp(0, 1), batch["prompt_embeds"],
                                  batch["gt_image_embeds"])
        return SeeSRCondition(self._image(batch["lq"]), batch["prompt_embeds"], batch["image_embeds"])

    def _one_step(self, student: nn.Module, start: Tensor, noise: Tensor, cond: SeeSRCondition) -> Tensor:
        """TAD-SeeSR's step (``tadsr.seesr.pipeline.tad_seesr_latents``'s, ``student`` called with a tensor t)."""
        from tadsr.seesr.pipeline import add_noise, one_step_z0

        z = add_noise(self.parts.scheduler.alphas_cumprod, start, noise, self.timestep)
        t = torch.full((z.shape[0],), self.timestep, dtype=torch.long, device=z.device)
        return one_step_z0(self.parts, z, student(z, t, cond).to(z.dtype), self.timestep)

    def student_x0(self, student: nn.Module, batch: dict[str, Tensor], cond: SeeSRCondition) -> Tensor:
        """The student's one step from the batch's start latent (``family.student_start``) and ``noise``, on the
        LR image's conditioning whatever the teacher's (as it runs at inference)."""
        start = batch["z_lr" if self.family.student_start == "lr" else "z_gt"]
        own = SeeSRCondition(self._image(batch["lq"]), batch["prompt_embeds"], batch["image_embeds"])
        with autocast(self.device, self.amp):
            return self._one_step(student, start, batch["noise"], own).float()

    def cache_identity(self) -> dict[str, Any]:
        return {"teacher_sha256": content_digest(self.path), "family": list(vars(self.family).values())}

    def save_student(self, path: Path, student: nn.Module) -> None:
        """A TAD-SeeSR folder at ``path`` (``tadsr.seesr.convert.write_student``): the student's ControlNet and
        UNet (LoRA merged), the teacher's other parts, one step at ``timestep`` with the teacher's prompts."""
        from tadsr.seesr.convert import write_student

        state = merge_lora({k: v.detach() for k, v in student.state_dict().items()})
        split = {part: {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(f"{part}.")}
                 for part in ("unet", "controlnet")}
        write_student(self.path, path, split["unet"], split["controlnet"])

    @torch.no_grad()
    def validate(self, student: nn.Module, lq: Tensor) -> Tensor:
        """The student's one step on ``lq`` from fixed draws, decoded and colour-fixed as ``tadsr upscale`` does
        (SeeSR's AdaIN against the x4 bicubic), in [-1, 1]."""
        from tadsr.seesr.pipeline import adain_color_fix, decode, encode_lr

        parts = self.parts
        gen = torch.Generator().manual_seed(0)
        image = self._image(lq)
        image_embeds, prompt_embeds = self._embed(lq)
        shape = (lq.shape[0], int(parts.vae.config.latent_channels), *(s // self.vae_factor for s in image.shape[-2:]))
        posterior, noise = (torch.randn(shape, generator=gen).to(self.device) for _ in range(2))
        cond = SeeSRCondition(image, prompt_embeds, image_embeds)
        with autocast(self.device, self.amp):
            z0 = self._one_step(student, encode_lr(parts.vae, image, posterior), noise, cond)
            hr = decode(parts.vae, z0).float()
        return adain_color_fix((hr + 1) / 2, image) * 2 - 1
