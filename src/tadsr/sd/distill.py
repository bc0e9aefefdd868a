"""TAD-SR distillation of an SD-based teacher (paper Appendix B, Algorithm 1 with the VP process).

``SDDistillTrainer`` is the ResShift ``DistillTrainer`` with the teacher process swapped (``tadsr.sd.process``):

* the teacher is a diffusers folder (``DiffusersUpscaleTeacher``); the student a trainable copy of its UNet, called
  once at ``sd.student_t`` on pure noise z_T with the teacher's conditioning (the LR image noised to
  ``sd.noise_level``, the prompt embedded once);
* L_distill: the teacher's ``sd.teacher_steps``-step sample from the same z_T and the same noised LR image;
* HSD (the same ``ScoreDistillationLoss``) at t' in [0, ``sd.hsd_t_max``) of the VP process;
* the time-aware discriminator on the outputs of the teacher UNet's down blocks at t in [0, ``sd.dis_t_max``).

Everything else is the trainer's: the teacher-output cache (``distill.teacher_cache``), checkpoints, exact resume,
torchrun, finite checks. The run writes the student file of ``tadsr.sd.student`` (UNet, VAE, prompt embedding).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tadsr.errors import ConfigError
from tadsr.losses import DistillationLoss, ScoreDistillationLoss
from tadsr.nets.discriminator import LatentDiscriminator
from tadsr.sd.diffusers_teacher import DiffusersUpscaleTeacher
from tadsr.sd.process import SDCondition, VPProcess, unet_x0
from tadsr.sd.student import save_sd_student
from tadsr.training.distill import DistillTrainer, _Pair
from tadsr.training.ema import EMA
from tadsr.training.trainer import frozen, scheduled_lr


class SDDistillTrainer(DistillTrainer):
    """Distils a diffusers folder (``StableDiffusionUpscalePipeline`` layout) into a one-step student file."""

    settings_from_elsewhere = ("model.",)  # the architecture is the folder's

    def build(self) -> None:
        cfg = self.config
        sd, d = cfg.sd, cfg.distill
        if d.unfrozen_teacher or d.double_scaling:
            raise ConfigError("distill.unfrozen_teacher and distill.double_scaling are quirks of the ResShift code; "
                              "an SD teacher has neither")
        teacher = DiffusersUpscaleTeacher.from_folder(self.teacher_path, prompt=sd.prompt,
                                                      noise_level=sd.noise_level, device=self.device)
        self.sd_teacher = teacher
        frozen(teacher.unet)
        frozen(teacher.vae)
        multiple = teacher.scale * teacher.lr_multiple
        if cfg.data.gt_size % multiple:
            raise ConfigError(f"data.gt_size = {cfg.data.gt_size}: {self.teacher_path} needs a multiple of "
                              f"{multiple} (scale {teacher.scale} x its UNet's multiple {teacher.lr_multiple})")
        acp = teacher.scheduler.alphas_cumprod.to(torch.float64)
        self.process = VPProcess(teacher.unet, acp, teacher.prediction_type)
        last = self.process.num_timesteps - 1
        self.student_t = last if sd.student_t < 0 else sd.student_t
        for name, value in (("sd.student_t", self.student_t), ("sd.hsd_t_max", sd.hsd_t_max - 1),
                            ("sd.dis_t_max", sd.dis_t_max)):
            if value > last:
                raise ConfigError(f"{name} = {value}: the teacher's process has timesteps 0..{last}")
        self.dis_t_max = sd.dis_t_max or last
        self.network = copy.deepcopy(teacher.unet).train().requires_grad_(True)
        self.ema = EMA(self.network, cfg.optim.ema_rate)
        self.student_net: nn.Module = DistributedDataParallel(self.network) if self.world > 1 else self.network
        self.discriminator = None
        if d.discriminator != "none":
            channels = self.process.feature_channels
            self.discriminator = LatentDiscriminator(channels, channels[0], d.c_dim,
                                                     time_aware=d.discriminator == "time-aware").to(self.device)
        self.discriminator_ddp = self.discriminator
        if self.world > 1 and self.discriminator is not None:
            self.discriminator_ddp = DistributedDataParallel(self.discriminator)
        o = cfg.optim
        self.opt_g = self.make_optimizer(self.network, scheduled_lr(o, 1))
        self.opt_d = self.make_optimizer(self.discriminator, o.lr_d) if self.discriminator is not None else None
        self.distill_loss = DistillationLoss()
        self.score_loss = None
        if d.score_distill != "none":
            self.score_loss = ScoreDistillationLoss(self.process, d.score_distill, (0, sd.hsd_t_max),
                                                    "uniform" if d.uniform_noise else "gaussian")
        self.validation_steps = 1
        self.teacher = None  # what DistillTrainer calls the ResShift teacher

    @property
    def scale(self) -> int:
        return self.sd_teacher.scale

    def _cache_key(self) -> str:
        """The teacher folder's weights and configs (their bytes), the SD settings and the data settings."""
        digest = hashlib.sha256()
        for path in sorted(p for p in self.teacher_path.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(self.teacher_path)).encode())
            with open(path, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
        data, run = self.config.data, self.config.run
        return json.dumps({"teacher_sha256": digest.hexdigest(), "sd": list(vars(self.config.sd).values()),
                           "size": self.config.distill.teacher_cache, "data": str(Path(data.path).resolve()),
                           "degradation": data.degradation, "gt_size": data.gt_size, "crop": data.crop,
                           "scale_range": list(data.scale_range), "gray_prob": data.gray_prob,
                           "texture": [data.texture_ref, data.texture_tries], "seed": run.seed,
                           "batch_size": run.batch_size}, sort_keys=True)

    @torch.no_grad()
    def targets(self, lq: Tensor, gt: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The LR image's noise, the GT latent, z_T and the teacher's sample from both (drawn from ``generator``)."""
        teacher = self.sd_teacher
        lr_noise = torch.randn(lq.shape, generator=generator, dtype=torch.float32).to(self.device)
        z_gt = teacher.encode(gt).float()
        noise = torch.randn(z_gt.shape, generator=generator, dtype=torch.float32).to(self.device)
        cond = teacher.condition(lq, lr_noise=lr_noise)
        with self.forward_context():
            z_tch = teacher.sample(lq, self.config.sd.teacher_steps, cond=cond, latents=noise).float()
        return {"lr_noise": lr_noise, "z_gt": z_gt, "noise": noise, "z_tch": z_tch}

    def condition(self, batch: dict[str, Tensor]) -> SDCondition:
        return self.sd_teacher.condition(batch["lq"], lr_noise=batch["lr_noise"])

    def student_output(self, pair: _Pair) -> Tensor:
        """The student's x0_hat from pure noise z_T at ``student_t`` (one UNet call)."""
        t = torch.full((pair.lq.shape[0],), self.student_t, dtype=torch.long, device=self.device)
        with self.forward_context():
            return unet_x0(self.student_net, self.process.alphas_cumprod, self.process.prediction, pair.noise, t,
                           pair.cond).float()

    def write_final(self, path: Path) -> None:
        t = self.sd_teacher
        save_sd_student(path, self.ema.model, t.vae, t.low_res_scheduler, t.prompt_embeds, t.noise_level,
                        self.student_t, self.process.prediction, self.process.alphas_cumprod)

    @torch.no_grad()
    def validation_output(self, lq: Tensor) -> Tensor:
        """The EMA student's one step on ``lq`` from a fixed noise, decoded."""
        gen = torch.Generator().manual_seed(0)
        lr_noise = torch.randn(lq.shape, generator=gen).to(self.device)
        cond = self.sd_teacher.condition(lq, lr_noise=lr_noise)
        shape = (lq.shape[0], self.sd_teacher.vae.config.latent_channels, *lq.shape[2:])
        z_T = torch.randn(shape, generator=gen).to(self.device)
        t = torch.full((lq.shape[0],), self.student_t, dtype=torch.long, device=self.device)
        z_0 = unet_x0(self.ema.model, self.process.alphas_cumprod, self.process.prediction, z_T, t, cond)
        return self.sd_teacher.decode(z_0)
