"""The diffusers family: an SD-based SR teacher in a diffusers folder as a ``DistillTeacher`` (paper Appendix B).

The teacher is a ``StableDiffusionUpscalePipeline`` folder (``tadsr.sd.diffusers_teacher``); the process its VP
latent process (``tadsr.sd.process.VPProcess``). The student is a trainable copy of its UNet called once at
``family.student_t`` on pure noise z_T with the teacher's conditioning (the LR image noised to
``family.noise_level``, the prompt embedded once); L_distill's target is the teacher's ``family.teacher_steps``-step
sample from the same z_T and the same noised LR image; the time-aware discriminator reads the outputs of the teacher
UNet's down blocks. The run writes the student file of ``tadsr.sd.student`` (UNet, VAE, prompt embedding).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tadsr.devices import autocast
from tadsr.errors import ConfigError
from tadsr.fileio import content_digest
from tadsr.sd.diffusers_teacher import DiffusersUpscaleTeacher, read_index
from tadsr.sd.process import SDCondition, VPProcess, unet_x0
from tadsr.sd.student import save_sd_student
from tadsr.training.config import DiffusersFamily


class DiffusersTeacher:
    """``DistillTeacher`` of a diffusers folder (module docstring)."""

    kind = "diffusers"
    default_hsd_t_max = 200  # t' from [0, 200) of 1000: the small-t end, as the paper's steps 1-3 of ResShift's 15
    student_model = None  # the student's architecture is the folder's UNet, recorded in the student file
    student_suffix = ".safetensors"

    def __init__(self, path: Path, family: DiffusersFamily, device: torch.device, amp: torch.dtype | None) -> None:
        self.path, self.family, self.device, self.amp = path, family, device, amp
        self.teacher = DiffusersUpscaleTeacher.from_folder(path, prompt=family.prompt, noise_level=family.noise_level,
                                                           device=device, setting="family.noise_level")
        self.network = self.teacher.unet.eval().requires_grad_(False)
        self.teacher.vae.eval().requires_grad_(False)
        acp = self.teacher.scheduler.alphas_cumprod.to(torch.float64)
        self.process = VPProcess(self.network, acp, self.teacher.prediction_type)
        last = self.process.num_timesteps - 1
        self.student_t = last if family.student_t < 0 else family.student_t
        if self.student_t > last:
            raise ConfigError(f"family.student_t = {self.student_t}: the teacher's process has timesteps 0..{last}")
        self.scale, self.gt_multiple = self.teacher.scale, self.teacher.scale * self.teacher.lr_multiple
        self.feature_channels = self.process.feature_channels
        self.model_channels = self.feature_channels[0]

    @staticmethod
    def recipe(path: Path) -> tuple[None, str, str]:
        """No tadsr model; the tiny preset's recipe (checks the folder first: one line if the backend cannot run it)."""
        read_index(path)
        return None, "tiny", (f"the tiny preset's recipe for {path} (its architecture is the folder's; pass --preset "
                              "or --config for another recipe)")

    def make_student(self) -> nn.Module:
        return copy.deepcopy(self.network).train().requires_grad_(True)

    @torch.no_grad()
    def targets(self, lq: Tensor, gt: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The LR image's noise, the GT latent, z_T and the teacher's sample from both, every draw from
        ``generator`` (a scheduler's per-step draws too, where it makes any)."""
        lr_noise = torch.randn(lq.shape, generator=generator, dtype=torch.float32).to(self.device)
        z_gt = self.teacher.encode(gt).float()
        noise = torch.randn(z_gt.shape, generator=generator, dtype=torch.float32).to(self.device)
        cond = self.teacher.condition(lq, lr_noise=lr_noise)
        with autocast(self.device, self.amp):
            z_tch = self.teacher.sample(lq, self.family.teacher_steps, generator, cond=cond, latents=noise).float()
        return {"lr_noise": lr_noise, "z_gt": z_gt, "noise": noise, "z_tch": z_tch}

    def condition(self, batch: dict[str, Tensor]) -> SDCondition:
        return self.teacher.condition(batch["lq"], lr_noise=batch["lr_noise"])

    def _x0(self, student: nn.Module, z_T: Tensor, cond: SDCondition) -> Tensor:
        t = torch.full((z_T.shape[0],), self.student_t, dtype=torch.long, device=self.device)
        return unet_x0(student, self.process.alphas_cumprod, self.process.prediction, z_T, t, cond)

    def student_x0(self, student: nn.Module, batch: dict[str, Tensor], cond: SDCondition) -> Tensor:
        """The student's x0_hat from pure noise z_T at ``student_t`` (one UNet call)."""
        with autocast(self.device, self.amp):
            return self._x0(student, batch["noise"], cond).float()

    def cache_identity(self) -> dict[str, Any]:
        return {"teacher_sha256": content_digest(self.path), "family": list(vars(self.family).values())}

    def save_student(self, path: Path, student: nn.Module) -> None:
        t = self.teacher
        save_sd_student(path, student, t.vae, t.low_res_scheduler, t.prompt_embeds, t.noise_level, self.student_t,
                        self.process.prediction, self.process.alphas_cumprod, max_noise_level=t.max_noise_level)

    @torch.no_grad()
    def validate(self, student: nn.Module, lq: Tensor) -> Tensor:
        """The student's one step on ``lq`` from a fixed noise, decoded."""
        gen = torch.Generator().manual_seed(0)
        lr_noise = torch.randn(lq.shape, generator=gen).to(self.device)
        cond = self.teacher.condition(lq, lr_noise=lr_noise)
        z_T = torch.randn((lq.shape[0], self.teacher.latent_channels, *lq.shape[2:]), generator=gen).to(self.device)
        return self.teacher.decode(self._x0(student, z_T, cond))
