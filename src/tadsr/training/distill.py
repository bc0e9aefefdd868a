"""TAD-SR distillation (paper Algorithm 1; docs/implementation-notes.md §4.2-4.6), one trainer for every teacher.

The teacher is a component (``tadsr.training.families``: a tadsr ResShift file or a diffusers folder, chosen by
``open_teacher`` from its path). Per iteration: the one-step student maps the batch's noise to a clean latent
(``DistillTeacher.student_x0``); the discriminator step (``discriminator_step``) compares the teacher encoder's
features of the noised GT latent (real) and of the noised student output (fake, detached); the generator step
(``generator_step``, the discriminator's weights frozen) minimises L_distill + lambda_score L_hsd - lambda_adv D(fake)
reusing the fake features (gradients flow through the frozen teacher's activations to the student); then the EMA
update. The losses, the discriminator, both optimisers, the EMA, DDP, the teacher cache, checkpoints and resume are
this trainer's, whatever the teacher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tadsr import distributed
from tadsr.devices import DTYPES
from tadsr.errors import ConfigError, first_line
from tadsr.fileio import atomic_torch_save
from tadsr.losses import DistillationLoss, ScoreDistillationLoss, discriminator_hinge_loss, generator_adversarial_loss
from tadsr.losses.score import draw_grid_timesteps
from tadsr.nets.discriminator import LatentDiscriminator
from tadsr.training.config import TrainConfig
from tadsr.training.ema import EMA
from tadsr.training.families import DistillTeacher, open_teacher
from tadsr.training.stream import tensor_batch_stream
from tadsr.training.trainer import Trainer, scheduled_lr


@contextlib.contextmanager
def frozen_weights(module: nn.Module | None) -> Iterator[None]:
    """No gradients for ``module``'s parameters inside the block (they still flow to its inputs)."""
    if module is None:
        yield
        return
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class DistillTrainer(Trainer):
    """Distils a teacher (a tadsr file or a diffusers folder: ``tadsr.training.families``) into a one-step student.
    ``config`` is resolved for that teacher (``tadsr.training.families.distill_config``)."""

    command = "distill"
    settings_from_elsewhere = ("model.",)  # the student is the teacher's architecture
    teacher: DistillTeacher

    def __init__(self, config: TrainConfig, run_dir: Path, teacher: str | Path, device: str | torch.device = "cpu",
                 resume: bool = False, show_progress: bool = True) -> None:
        self.teacher_path = Path(teacher)
        super().__init__(config, run_dir, device=device, resume=resume, show_progress=show_progress)

    def build(self) -> None:
        cfg = self.config
        self.teacher = open_teacher(self.teacher_path, cfg.family, self.device, DTYPES.get(cfg.run.amp))
        self.config = dataclasses.replace(cfg, model=self.teacher.student_model)  # what is trained, recorded
        d, process = cfg.distill, self.teacher.process
        last = process.num_timesteps - 1
        self.hsd_t_max = d.hsd_t_max or self.teacher.default_hsd_t_max  # t' from [hsd_t_min, hsd_t_max)
        if self.hsd_t_max > process.num_timesteps:
            raise ConfigError(f"distill.hsd_t_max={self.hsd_t_max}: the teacher's process has timesteps 0..{last}")
        if d.hsd_t_min >= self.hsd_t_max:
            raise ConfigError(f"distill.hsd_t_min={d.hsd_t_min}: HSD's t' is drawn from [hsd_t_min, hsd_t_max) and "
                              f"hsd_t_max is {self.hsd_t_max}")
        if d.dis_t_max > last:
            raise ConfigError(f"distill.dis_t_max={d.dis_t_max}: the discriminator's t must stay below T-1 = {last}")
        self.dis_t_max = d.dis_t_max or last  # its t from [dis_t_min, dis_t_max)
        if d.dis_t_min >= self.dis_t_max:
            raise ConfigError(f"distill.dis_t_min={d.dis_t_min}: the discriminator's t is drawn from [dis_t_min, "
                              f"dis_t_max) and dis_t_max is {self.dis_t_max}")
        if cfg.data.gt_size % self.teacher.gt_multiple:
            raise ConfigError(f"data.gt_size = {cfg.data.gt_size}: {self.teacher_path} needs a multiple of "
                              f"{self.teacher.gt_multiple} (its scale x its network's LR multiple)")
        self.final_suffix = self.teacher.student_suffix
        self.network = self.teacher.make_student()
        self.ema = EMA(self.network, cfg.optim.ema_rate, cfg.optim.ema_warmup)
        self.discriminator = None
        if d.discriminator != "none":
            self.discriminator = LatentDiscriminator(self.teacher.feature_channels, self.teacher.model_channels,
                                                     d.c_dim, time_aware=d.discriminator == "time-aware"
                                                     ).to(self.device)
        self.student_ddp: nn.Module = self.network
        self.discriminator_ddp: nn.Module | None = self.discriminator
        if self.world > 1:
            self.student_ddp = DistributedDataParallel(self.network)
            if self.discriminator is not None:
                self.discriminator_ddp = DistributedDataParallel(self.discriminator)
        o = cfg.optim
        self.opt_g = self.make_optimizer(self.network, scheduled_lr(o, 1))
        self.opt_d = self.make_optimizer(self.discriminator, o.lr_d) if self.discriminator is not None else None
        self.distill_loss = DistillationLoss()
        self.score_loss = None
        if d.score_distill != "none":
            self.score_loss = ScoreDistillationLoss(process, d.score_distill, (d.hsd_t_min, self.hsd_t_max),
                                                    "uniform" if d.uniform_noise else "gaussian", d.hsd_t_step)

    @property
    def student(self) -> nn.Module:
        """The student network being trained (``network``)."""
        return self.network

    @property
    def scale(self) -> int:
        return self.teacher.scale

    def write_final(self, path: Path, network: nn.Module) -> None:
        """The teacher family's student file."""
        self.teacher.save_student(path, network)

    def validation_output(self, network: nn.Module, lq: Tensor) -> Tensor:
        return self.teacher.validate(network, lq)

    # --- data: on the fly, or from the teacher cache ------------------------------------------------------

    def batches(self) -> Any:
        if self.config.distill.teacher_cache <= 0:
            return super().batches()
        run = self.config.run
        return tensor_batch_stream(self.teacher_cache(), run.batch_size // self.world, run.seed, self.rank,
                                   self.world, self.step)

    def cache_key(self) -> str:
        """What the cache's contents depend on: the teacher (``DistillTeacher.cache_identity``) and the data
        settings that draw the pairs. A cache left in the run folder by another teacher or other settings is
        rebuilt, never reused."""
        data, run = self.config.data, self.config.run
        return json.dumps({**self.teacher.cache_identity(), "size": self.config.distill.teacher_cache,
                           "data": str(Path(data.path).resolve()), "degradation": data.degradation,
                           "gt_size": data.gt_size, "crop": data.crop, "scale_range": list(data.scale_range),
                           "gray_prob": data.gray_prob, "texture": [data.texture_ref, data.texture_tries],
                           "seed": run.seed, "batch_size": run.batch_size}, sort_keys=True)

    def _saved_cache(self, path: Path, cache_key: str) -> dict[str, Tensor] | None:
        """The cache at ``path`` if it is this run's (``cache_key``) and whole, else None with a warning saying
        why it is rebuilt (unreadable, another teacher or other settings, damaged)."""
        if not path.is_file():
            return None
        try:
            cache = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, foreign or refused by weights_only: rebuild it
            self.warn(f"{path}: not a readable teacher cache ({first_line(err)}); rebuilding it")
            return None
        if not isinstance(cache, dict):
            self.warn(f"{path}: not a teacher cache; rebuilding it")
            return None
        if cache.pop("key", None) != cache_key:
            self.warn(f"{path}: a teacher cache of another teacher or other settings; rebuilding it")
            return None
        problem = _cache_problem(cache, self.config.distill.teacher_cache)
        if problem is not None:
            self.warn(f"{path}: a damaged teacher cache ({problem}); rebuilding it")
            return None
        return cache

    @torch.no_grad()
    def teacher_cache(self) -> dict[str, Tensor]:
        """lq, gt and the teacher's ``targets`` for ``distill.teacher_cache`` fixed pairs, from
        ``RUN_DIR/teacher_cache.pt`` when it holds this run's (``cache_key``), else computed (the teacher's sampler
        once for each pair) and saved there. The pairs are computed in chunks of ``run.batch_size``, chunk k's
        draws from a generator seeded with ``run.seed + 104729 + k``: under torchrun the ranks share the chunks
        and broadcast them, and the cache is the same bits whatever the number of ranks."""
        path, cache_key = self.run_dir / "teacher_cache.pt", self.cache_key()
        cache = self._saved_cache(path, cache_key)
        if not distributed.any_rank(cache is None, self.device):  # under torchrun all ranks rebuild, or none
            assert cache is not None
            return cache
        size, batch = self.config.distill.teacher_cache, self.config.run.batch_size
        data = self.dataset()
        chunks = list(range(0, size, batch))
        mine = {}  # under torchrun each rank computes every world-th chunk, then each chunk goes to every rank
        for k, first in enumerate(chunks):
            if k % self.world != self.rank:
                continue
            items = [data.sample(i % len(data), i // len(data)) for i in range(first, min(first + batch, size))]
            lq = torch.stack([x["lq"] for x in items]).to(self.device)
            gt = torch.stack([x["gt"] for x in items]).to(self.device)
            gen = torch.Generator().manual_seed(self.config.run.seed + 104729 + k)  # the same whatever the ranks
            mine[k] = {key: value.float().cpu() for key, value in
                       {"lq": lq, "gt": gt, **self.teacher.targets(lq, gt, gen)}.items()}
        parts: dict[str, list[Tensor]] = {}
        for k in range(len(chunks)):
            for key, value in distributed.broadcast_tensors(mine.get(k), k % self.world, self.device).items():
                parts.setdefault(key, []).append(value)
        cache = {k: torch.cat(v) for k, v in parts.items()}
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({**cache, "key": cache_key}, path)
        return cache

    # --- one iteration ------------------------------------------------------------------------------------

    def pair(self, batch: dict[str, Any]) -> Pair:
        """A batch on the device with the teacher's targets (from the cache, or computed now from ``rng``) and its
        conditioning."""
        if "z_tch" in batch:  # from the teacher cache
            parts = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, Tensor)}
        else:
            lq, gt = batch["lq"].to(self.device), batch["gt"].to(self.device)
            parts = {"lq": lq, **self.teacher.targets(lq, gt, self.rng)}
        return Pair(parts, self.teacher.condition(parts))

    def _noise_like(self, x: Tensor, uniform: bool = False) -> Tensor:
        draw = torch.rand if uniform else torch.randn
        return draw(x.shape, generator=self.rng, dtype=torch.float32).to(x)

    def _features(self, z0: Tensor, cond: Any, t: Tensor, noise: Tensor) -> list[Tensor]:
        """The teacher encoder's features of z0 noised to t (Eq. 1): what the time-aware discriminator reads."""
        process = self.teacher.process
        return process.encoder_features(process.q_sample(z0, t, noise, cond), t, cond)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        pair = self.pair(batch)
        z_s = self.teacher.student_x0(self.student_ddp, pair.parts, pair.cond)
        terms: dict[str, Tensor] = {}
        fake = t_dis = None
        if self.discriminator is not None:
            d_terms, fake, t_dis = self.discriminator_step(pair, z_s)
            terms |= d_terms
        terms |= self.generator_step(pair, z_s, fake, t_dis)
        self.ema.update(self.network, self.step + 1)
        return {k: float(v) for k, v in terms.items()}

    def discriminator_step(self, pair: Pair, z_s: Tensor) -> tuple[dict[str, Tensor], list[Tensor], Tensor]:
        """One hinge-loss step of D (``distill.hinge``) on real (noised GT latent) and fake (noised student output,
        detached) features at a random t from [``distill.dis_t_min``, ``dis_t_max``) (default [0, T-1)), shared by
        real and fake (and by the batch with ``dis_t_per_batch``). Returns (``d_loss`` and the
        separation measures of ``separation``, the fake features with their graph to the student, t)."""
        assert self.discriminator_ddp is not None and self.opt_d is not None
        n, d = pair.z_gt.shape[0], self.config.distill
        t_dis = draw_grid_timesteps(d.dis_t_min, self.dis_t_max, d.dis_t_step, 1 if d.dis_t_per_batch else n,
                                    self.rng).expand(n).to(self.device)
        n_dis = self._noise_like(pair.z_gt, self.config.distill.uniform_noise)
        with self.forward_context():
            with torch.no_grad():
                real = self._features(pair.z_gt, pair.cond, t_dis, n_dis)
            fake = self._features(z_s, pair.cond, t_dis, n_dis)
            # real and (detached) fake through D in one forward: one DDP forward per backward
            both = [torch.cat([r, f.detach()]) for r, f in zip(real, fake, strict=True)]
            d_real, d_fake = self.discriminator_ddp(both, t_dis.repeat(2)).chunk(2)
            d_loss = discriminator_hinge_loss(d_real, d_fake, self.config.distill.hinge == "per-logit").mean()
        self.check_finite({"d_loss": d_loss})
        self.optimizer_step(self.opt_d, d_loss)
        return {"d_loss": d_loss.detach(), **separation(d_real.detach(), d_fake.detach())}, fake, t_dis

    def generator_step(self, pair: Pair, z_s: Tensor, fake: list[Tensor] | None,
                       t_dis: Tensor | None) -> dict[str, Tensor]:
        """One step of the student on L_distill + lambda_score L_score + lambda_adv L_adv (the discriminator's
        weights frozen: its gradients would be thrown away). Returns the terms (batch means) and ``loss``."""
        d = self.config.distill
        with frozen_weights(self.discriminator):
            with self.forward_context():
                terms = {"distill": d.lambda_distill * self.distill_loss(z_s, pair.z_tch)}
                if self.score_loss is not None:
                    target = pair.z_tch if d.score_target == "teacher" else pair.z_gt
                    terms[d.score_distill] = d.lambda_score * self.score_loss(z_s, target, pair.cond, self.rng)
                if self.discriminator is not None:
                    assert fake is not None and t_dis is not None
                    # the updated D on the same fake features; the unwrapped module: no gradient sync for D here
                    terms["adv"] = d.lambda_adv * generator_adversarial_loss(self.discriminator(fake, t_dis))
            self.check_finite(terms)
            loss = sum(terms.values()).mean()
            self.set_scheduled_lr(self.opt_g)
            self.optimizer_step(self.opt_g, loss)
        self.teacher.network.zero_grad(set_to_none=True)  # gradients a trainable teacher collected: never used
        self.scaler.update()
        return {**{k: v.detach().mean() for k, v in terms.items()}, "loss": loss.detach()}

    # --- checkpoint -----------------------------------------------------------------------------------------

    def _trained_keys(self) -> set[str]:
        """The student's state-dict keys that change in training: its trainable parameters and its buffers (the
        frozen parameters are the teacher's, loaded from the teacher again on resume)."""
        frozen = {name for name, p in self.network.named_parameters() if not p.requires_grad}
        return set(self.network.state_dict()) - frozen

    def state(self) -> dict[str, Any]:
        keys = self._trained_keys()

        def trained(module: nn.Module) -> dict[str, Tensor]:
            return {k: v for k, v in module.state_dict().items() if k in keys}

        out = {"teacher": str(self.teacher_path), "student": trained(self.network),
               "ema": trained(self.ema.model), "opt_g": self.opt_g.state_dict()}
        if self.discriminator is not None and self.opt_d is not None:
            out.update(discriminator=self.discriminator.state_dict(), opt_d=self.opt_d.state_dict())
        return out

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        keys = self._trained_keys()
        for module, name in ((self.network, "student"), (self.ema.model, "ema")):
            missing, unexpected = module.load_state_dict(checkpoint[name], strict=False)
            if unexpected or set(missing) & keys:
                raise ConfigError(f"the checkpoint's {name} weights do not fit this run's student (missing: "
                                  f"{sorted(set(missing) & keys)[:3]}, unexpected: {sorted(unexpected)[:3]})")
        self.opt_g.load_state_dict(checkpoint["opt_g"])
        if self.discriminator is not None and self.opt_d is not None:
            self.discriminator.load_state_dict(checkpoint["discriminator"])
            self.opt_d.load_state_dict(checkpoint["opt_d"])


def separation(d_real: Tensor, d_fake: Tensor) -> dict[str, Tensor]:
    """How well D separates real from fake, from its logits (B, L) before its step, on each sample's mean logit:

    * ``d_acc``: the share of samples on the right side of 0 (real > 0, fake < 0); a per-sample content offset of
      D's output, common to a pair, moves it without any separation;
    * ``d_pair_acc``: the share of pairs (the same LR, t and noise) with D(real) > D(fake): what the generator's
      gradient follows (0.5: D cannot rank them);
    * ``d_gap``: the mean pair margin, D(real) - D(fake) (hinge losses stay at 2 while it is ~0);
    * ``d_spread``: the spread (standard deviation) of D(real) across the batch, the content offset to read
      ``d_gap`` against."""
    real, fake = d_real.mean(dim=1), d_fake.mean(dim=1)
    return {"d_acc": ((real > 0).float().mean() + (fake < 0).float().mean()) / 2,
            "d_pair_acc": (real > fake).float().mean(), "d_gap": (real - fake).mean(),
            "d_spread": real.std(unbiased=False)}


class Pair(NamedTuple):
    """One batch of the distillation: ``parts``, its tensors on the device (lq, gt and the teacher's ``targets``:
    the GT latent, the student's noise, the teacher's output from it, ...), and ``cond``, the teacher process's
    conditioning of it."""

    parts: dict[str, Tensor]
    cond: Any

    @property
    def z_gt(self) -> Tensor:
        return self.parts["z_gt"]

    @property
    def z_tch(self) -> Tensor:
        return self.parts["z_tch"]


CACHE_TENSORS = ("lq", "gt", "z_tch")  # what every family's cache holds (``DistillTrainer.pair`` reads z_tch)


def _cache_problem(cache: dict[str, Any], size: int) -> str | None:
    """Why a teacher cache with this run's key cannot be used (a tensor missing, of another count of pairs,
    not floating point or not finite), or None."""
    missing = [name for name in CACHE_TENSORS if name not in cache]
    if missing:
        return f"no {', '.join(missing)}"
    for name, value in cache.items():
        if not isinstance(value, Tensor) or not value.is_floating_point():
            return f"{name} is not a floating-point tensor"
        if value.ndim == 0 or value.shape[0] != size:
            return f"{name} holds {value.shape[0] if value.ndim else 0} pairs, not distill.teacher_cache={size}"
        if not torch.isfinite(value).all():
            return f"{name} is not finite"
    return None
