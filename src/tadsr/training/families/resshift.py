"""The ResShift family: a tadsr teacher file (``tadsr convert`` / ``tadsr train-teacher``) as a ``DistillTeacher``.

The student is a trainable copy of the teacher's Swin-UNet, run once at t = T-1 from the prior
z_T = z_y + kappa sqrt(eta_T) eps (paper Eq. 14 with t = T); L_distill's target is the teacher's deterministic T-step
sample from the same z_T (Eq. 3, 6); the process is ``ResShiftProcess`` (Eq. 1). The run writes a tadsr model file:
the EMA student with the teacher's first stage, role ``student``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tadsr.config import ModelConfig
from tadsr.devices import autocast
from tadsr.diffusion.process import ResShiftCondition, ResShiftProcess
from tadsr.diffusion.samplers import sample
from tadsr.diffusion.schedule import prior_sample
from tadsr.fileio import content_digest
from tadsr.inference.pipeline import encode_lr, super_resolve
from tadsr.model import SRModel, denoiser, load_model, read_model_config, save_model
from tadsr.training.config import ResShiftFamily, infer_train_preset


class ResShiftTeacher:
    """``DistillTeacher`` of a tadsr teacher file (module docstring); ``family``: the authors' code's quirks."""

    kind = "resshift"
    default_hsd_t_max = 3  # t' from code indices [0, 3): the paper's steps 1..3 of T = 15
    student_suffix = ".safetensors"

    def __init__(self, path: Path, family: ResShiftFamily, device: torch.device, amp: torch.dtype | None) -> None:
        self.path, self.device, self.amp = path, device, amp
        self.model = load_model(path, device=device)
        self.model.first_stage.eval().requires_grad_(False)
        # the authors' code leaves the teacher's weights trainable: they collect gradients the trainer drops
        self.network = self.model.unet.eval().requires_grad_(family.unfrozen_teacher)
        self.schedule = self.model.schedule
        self.process = ResShiftProcess(self.schedule, self.model.denoiser, family.double_scaling)
        config = self.model.config
        self.student_model: ModelConfig = dataclasses.replace(config, role="student")
        self.scale, self.gt_multiple = config.scale, config.scale * config.lr_multiple
        self.feature_channels, self.model_channels = self.network.feature_channels, config.unet.model_channels

    @staticmethod
    def recipe(path: Path) -> tuple[ModelConfig, str, str]:
        """The teacher's architecture as the student's, and the preset of that architecture (its recipe)."""
        model = read_model_config(path)
        preset = infer_train_preset(model)
        return model, preset, f"--preset {preset} (the teacher's architecture)"

    def make_student(self) -> nn.Module:
        return copy.deepcopy(self.network).train().requires_grad_(True)

    @torch.no_grad()
    def targets(self, lq: Tensor, gt: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """z_y = E(bicubic(lq)), the GT latent, the prior noise and the teacher's deterministic T-step output from
        that z_T (Eq. 6's target)."""
        with autocast(self.device, self.amp):
            z_y, z_gt = encode_lr(self.model, lq).float(), self.model.first_stage.encode(gt).float()
        noise = torch.randn(z_y.shape, generator=generator, dtype=torch.float32).to(z_y)
        with autocast(self.device, self.amp):
            z_tch = sample(self.model.denoiser, self.schedule, z_y, lq, noise, sampler="deterministic").float()
        return {"z_y": z_y, "z_gt": z_gt, "noise": noise, "z_tch": z_tch}

    def condition(self, batch: dict[str, Tensor]) -> ResShiftCondition:
        return ResShiftCondition(batch["z_y"], batch["lq"])

    def student_x0(self, student: nn.Module, batch: dict[str, Tensor], cond: ResShiftCondition) -> Tensor:
        """The student's z_0 from the prior z_T = z_y + kappa sqrt(eta_T) noise at t = T-1 (one call)."""
        n, last = cond.lq.shape[0], self.schedule.num_steps - 1
        z_T = prior_sample(self.schedule, cond.z_y, batch["noise"])
        with autocast(self.device, self.amp):
            return denoiser(student, self.student_model, self.schedule)(
                z_T, torch.full((n,), last, device=self.device), cond.lq, cond.z_y).float()

    def cache_identity(self) -> dict[str, Any]:
        return {"teacher_sha256": content_digest(self.path)}

    def _model(self, student: nn.Module) -> SRModel:
        return SRModel(self.student_model, unet=student, first_stage=self.model.first_stage)  # shared, not copied

    def save_student(self, path: Path, student: nn.Module) -> None:
        save_model(self._model(student), path)

    @torch.no_grad()
    def validate(self, student: nn.Module, lq: Tensor) -> Tensor:
        return super_resolve(self._model(student), lq, steps=1, generator=torch.Generator().manual_seed(0))
