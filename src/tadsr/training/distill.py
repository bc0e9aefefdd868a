"""TAD-SR distillation (paper Algorithm 1; reference.md §4.2-4.6).

Per iteration: the one-step student maps z_T = z_y + kappa sqrt(eta_T) eps to z_0 at t = T-1; the discriminator
step compares teacher-encoder features of the noised GT latent (real) and of the noised student output (fake,
detached); the generator step minimises L_distill + lambda_hsd L_hsd - lambda_adv D(fake) reusing the fake
features (gradients flow through the frozen teacher's activations to the student); then the EMA update.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tadsr.diffusion.samplers import predict_x0, sample
from tadsr.diffusion.schedule import prior_sample, q_sample, scale_input
from tadsr.inference.pipeline import encode_lr
from tadsr.losses import DistillationLoss, ScoreDistillationLoss, discriminator_hinge_loss, generator_adversarial_loss
from tadsr.model import SRModel, load_model
from tadsr.nets.discriminator import LatentDiscriminator
from tadsr.training.ema import EMA
from tadsr.training.stream import epoch_permutation
from tadsr.training.trainer import Trainer, frozen, generator_lr


class DistillTrainer(Trainer):
    """Distils a teacher file (``tadsr convert`` / ``tadsr train-teacher`` output) into a one-step student."""

    command = "distill"

    def __init__(self, config: Any, run_dir: Path, teacher: str | Path, **kwargs: Any) -> None:
        self.teacher_path = Path(teacher)
        super().__init__(config, run_dir, **kwargs)

    def build(self) -> None:
        cfg = self.config
        teacher = load_model(self.teacher_path, device=self.device)
        # the student is the teacher's architecture; the run's config records it
        self.config = dataclasses.replace(cfg, model=dataclasses.replace(teacher.config, role="student"))
        self.teacher = teacher
        self.schedule = teacher.schedule
        frozen(teacher.first_stage)
        frozen(teacher.unet)
        if cfg.distill.unfrozen_teacher:  # authors' code: the teacher's weights collect (unused) gradients
            teacher.unet.requires_grad_(True)
        self.student = copy.deepcopy(teacher.unet).train().requires_grad_(True)
        self.ema = EMA(self.student, cfg.optim.ema_rate)
        d = cfg.distill
        self.discriminator = None
        if d.discriminator != "none":
            unet = teacher.unet
            self.discriminator = LatentDiscriminator(unet.feature_channels, unet.config.model_channels, d.c_dim,
                                                     time_aware=d.discriminator == "time-aware").to(self.device)
        self.student_ddp: nn.Module = self.student
        self.discriminator_ddp: nn.Module | None = self.discriminator
        if self.world > 1:
            self.student_ddp = DistributedDataParallel(self.student)
            if self.discriminator is not None:
                self.discriminator_ddp = DistributedDataParallel(self.discriminator)
        o = cfg.optim
        self.opt_g = torch.optim.AdamW(self.student.parameters(), lr=generator_lr(o, 1), betas=o.betas,
                                       weight_decay=o.weight_decay)
        self.opt_d = (torch.optim.AdamW(self.discriminator.parameters(), lr=o.lr_d, betas=o.betas,
                                        weight_decay=o.weight_decay) if self.discriminator is not None else None)
        self.distill_loss = DistillationLoss()
        self.score_loss = None
        if d.score_distill != "none":
            self.score_loss = ScoreDistillationLoss(self.schedule, d.score_distill, (0, d.hsd_t_max),
                                                    "uniform" if d.uniform_noise else "gaussian", d.double_scaling)
        self.cache: dict[str, Tensor] | None = None

    # --- data: on the fly, or from the teacher cache ------------------------------------------------------

    def batches(self) -> Any:
        if self.config.distill.teacher_cache <= 0:
            return super().batches()
        self.cache = self._load_or_build_cache()
        return self._cached_batches()

    def _cache_path(self) -> Path:
        return self.run_dir / "teacher_cache.pt"

    def _cache_key(self) -> str:
        """What the cache's contents depend on: the teacher file's bytes and the data settings that draw the pairs.

        A cache left in the run folder by another teacher or other settings is rebuilt, never reused.
        """
        digest = hashlib.sha256()
        with open(self.teacher_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        data, run = self.config.data, self.config.run
        return json.dumps({"teacher_sha256": digest.hexdigest(), "size": self.config.distill.teacher_cache,
                           "data": str(Path(data.path).resolve()), "degradation": data.degradation,
                           "gt_size": data.gt_size, "seed": run.seed, "batch_size": run.batch_size}, sort_keys=True)

    @torch.no_grad()
    def _load_or_build_cache(self) -> dict[str, Tensor]:
        """(lq, gt, z_y, z_gt, noise, z_tch) for ``teacher_cache`` fixed pairs: T teacher calls each, once."""
        path, cache_key = self._cache_path(), self._cache_key()
        if path.is_file():
            cache = torch.load(path, map_location="cpu", weights_only=True)
            if cache.pop("key", None) == cache_key:
                return cache
        size = self.config.distill.teacher_cache
        data = self.dataset()
        items = [data.sample(i % len(data), i // len(data)) for i in range(size)]
        gen = torch.Generator().manual_seed(self.config.run.seed + 104729)
        parts: dict[str, list[Tensor]] = {k: [] for k in ("lq", "gt", "z_y", "z_gt", "noise", "z_tch")}
        for first in range(0, size, self.config.run.batch_size):
            chunk = items[first:first + self.config.run.batch_size]
            lq = torch.stack([x["lq"] for x in chunk]).to(self.device)
            gt = torch.stack([x["gt"] for x in chunk]).to(self.device)
            z_y, z_gt = self._encode(lq, gt)
            noise = torch.randn(z_y.shape, generator=gen).to(self.device)
            z_tch = self._teacher_target(z_y, lq, noise)
            for key, value in zip(parts, (lq, gt, z_y, z_gt, noise, z_tch), strict=True):
                parts[key].append(value.float().cpu())
        cache = {k: torch.cat(v) for k, v in parts.items()}
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({**cache, "key": cache_key}, tmp)
            tmp.replace(path)
        return cache

    def _cached_batches(self) -> Any:
        assert self.cache is not None
        n, per_rank = len(self.cache["lq"]), self.config.run.batch_size // self.world
        step = self.step
        perms: dict[int, list[int]] = {}
        while True:
            first = (step * self.world + self.rank) * per_rank
            idx = []
            for p in range(first, first + per_rank):
                epoch, k = divmod(p, n)
                if epoch not in perms:  # one permutation per epoch, not per sample
                    perms = {e: v for e, v in perms.items() if e >= epoch - 1}
                    perms[epoch] = epoch_permutation(n, self.config.run.seed, epoch)
                idx.append(perms[epoch][k])
            yield {key: value[idx] for key, value in self.cache.items()}
            step += 1

    # --- one iteration ------------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode(self, lq: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
        with self.forward_context():
            return encode_lr(self.teacher, lq).float(), self.teacher.first_stage.encode(gt).float()

    @torch.no_grad()
    def _teacher_target(self, z_y: Tensor, lq: Tensor, noise: Tensor) -> Tensor:
        """The teacher's deterministic T-step output from the same z_T (Eq. 6's target)."""
        with self.forward_context():
            return sample(self.teacher.unet, self.schedule, z_y, lq, noise, sampler="deterministic").float()

    def _noise_like(self, x: Tensor, uniform: bool = False) -> Tensor:
        draw = torch.rand if uniform else torch.randn
        return draw(x.shape, generator=self.generator, dtype=torch.float32).to(x)

    def _features(self, z0: Tensor, z_y: Tensor, t: Tensor, noise: Tensor, lq: Tensor) -> list[Tensor]:
        z_t = q_sample(self.schedule, z0, z_y, t, noise)
        return self.teacher.unet.encoder_features(scale_input(self.schedule, z_t, t), t, lq)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        cfg, schedule = self.config, self.schedule
        lq, gt = batch["lq"].to(self.device), batch["gt"].to(self.device)
        if "z_tch" in batch:  # from the teacher cache
            z_y, z_gt, noise, z_tch = (batch[k].to(self.device) for k in ("z_y", "z_gt", "noise", "z_tch"))
        else:
            z_y, z_gt = self._encode(lq, gt)
            noise = self._noise_like(z_y)
            z_tch = self._teacher_target(z_y, lq, noise)
        n, last = lq.shape[0], schedule.num_steps - 1
        z_T = prior_sample(schedule, z_y, noise)
        with self.forward_context():
            z_s = predict_x0(self.student_ddp, schedule, z_T, torch.full((n,), last, device=self.device), lq).float()
        terms: dict[str, Tensor] = {}
        fake = t_dis = None
        if self.discriminator is not None:
            assert self.discriminator_ddp is not None and self.opt_d is not None
            t_dis = torch.randint(0, last, (n,), generator=self.generator).to(self.device)
            n_dis = self._noise_like(z_y, cfg.distill.uniform_noise)
            with self.forward_context():
                with torch.no_grad():
                    real = self._features(z_gt, z_y, t_dis, n_dis, lq)
                fake = self._features(z_s, z_y, t_dis, n_dis, lq)
                # real and (detached) fake through D in one forward: one DDP forward per backward
                both = [torch.cat([r, f.detach()]) for r, f in zip(real, fake, strict=True)]
                d_real, d_fake = self.discriminator_ddp(both, t_dis.repeat(2)).chunk(2)
                d_loss = discriminator_hinge_loss(d_real, d_fake).mean()
            self.check_finite({"d_loss": d_loss})
            self.optimizer_step(self.opt_d, d_loss)
            terms["d_loss"] = d_loss.detach()
        with self.forward_context():
            g_terms = {"distill": self.distill_loss(z_s, z_tch)}
            if self.score_loss is not None:
                g_terms[cfg.distill.score_distill] = cfg.distill.lambda_hsd * self.score_loss(
                    self.teacher.unet, z_s, z_tch, z_y, lq, self.generator)
            if self.discriminator is not None:
                # the updated D on the same fake features; the unwrapped module: no gradient sync for D here
                g_terms["adv"] = cfg.distill.lambda_adv * generator_adversarial_loss(self.discriminator(fake, t_dis))
        self.check_finite(g_terms)
        loss = sum(g_terms.values()).mean()
        for group in self.opt_g.param_groups:
            group["lr"] = generator_lr(cfg.optim, self.step + 1)
        self.optimizer_step(self.opt_g, loss)
        self.scaler.update()
        self.ema.update(self.student)
        terms.update({k: v.detach().mean() for k, v in g_terms.items()})
        terms["loss"] = loss.detach()
        return {k: float(v) for k, v in terms.items()}

    # --- checkpoint, export, validation -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        out = {"teacher": str(self.teacher_path), "student": self.student.state_dict(),
               "ema": self.ema.model.state_dict(), "opt_g": self.opt_g.state_dict()}
        if self.discriminator is not None and self.opt_d is not None:
            out.update(discriminator=self.discriminator.state_dict(), opt_d=self.opt_d.state_dict())
        return out

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        self.student.load_state_dict(checkpoint["student"])
        self.ema.model.load_state_dict(checkpoint["ema"])
        self.opt_g.load_state_dict(checkpoint["opt_g"])
        if self.discriminator is not None and self.opt_d is not None:
            self.discriminator.load_state_dict(checkpoint["discriminator"])
            self.opt_d.load_state_dict(checkpoint["opt_d"])

    def final_model(self) -> SRModel:
        model = SRModel(self.config.model)
        model.unet.load_state_dict(self.ema.model.state_dict())
        model.first_stage.load_state_dict(self.teacher.first_stage.state_dict())
        return model

    @torch.no_grad()
    def validation_output(self, lq: Tensor) -> Tensor:
        z_y = encode_lr(self.teacher, lq)
        noise = torch.randn(z_y.shape, generator=torch.Generator().manual_seed(0)).to(z_y)
        z0 = sample(self.ema.model, self.schedule, z_y, lq, noise, one_step=True)
        return self.teacher.first_stage.decode(z0).clamp(-1, 1)
