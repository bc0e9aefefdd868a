"""Training a ResShift teacher (paper Eq. 4; docs/implementation-notes.md §1.4): x0 prediction, MSE in latent space.

t ~ U{0..T-1} per sample, z_t = z_0 + eta_t (z_y - z_0) + kappa sqrt(eta_t) eps (Eq. 1), and the loss is the mean
over (C, H, W) of (D(z_t, t, y) - z_0)^2 (weights 1, as every released config), D the preconditioned denoiser
(``tadsr.diffusion.denoiser``: the network sees z_t / sqrt(kappa^2 eta_t + 1)). The first stage is frozen (VQ
weights loaded with ``first_stage``, or the weight-free pixel-unshuffle). ``init`` fine-tunes a teacher file
instead of starting from random weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tadsr.diffusion.schedule import Schedule, q_sample
from tadsr.errors import ConfigError
from tadsr.inference.pipeline import encode_upsampled, super_resolve
from tadsr.model import SRModel, build_network, denoiser, load_first_stage, load_model, save_model
from tadsr.training.config import TrainConfig
from tadsr.training.ema import EMA
from tadsr.training.trainer import Trainer, frozen, scheduled_lr


def draw_timesteps(num_steps: int, n: int, last_prob: float, generator: torch.Generator) -> Tensor:
    """(n,) int64 code indices: T-1 with probability ``last_prob``, else uniform over 0..T-1 (Eq. 4's t ~ U)."""
    t = torch.randint(0, num_steps, (n,), generator=generator)
    if last_prob > 0:
        t = torch.where(torch.rand(n, generator=generator) < last_prob, num_steps - 1, t)
    return t


class TeacherTrainer(Trainer):
    command = "train-teacher"

    def __init__(self, config: TrainConfig, run_dir: Path, first_stage: str | Path | None = None,
                 init: str | Path | None = None, device: str | torch.device = "cpu", resume: bool = False,
                 show_progress: bool = True) -> None:
        """``init``: a tadsr model file to fine-tune. Its network starts the run (and its EMA), and its architecture,
        schedule and first stage replace ``config.model``, as a student takes its teacher's. A resumed run loads its
        checkpoint over it."""
        if first_stage and init:
            raise ConfigError("--first-stage and --init: a model file to fine-tune brings its own first stage")
        self.first_stage_path = Path(first_stage) if first_stage else None
        self.init_path = Path(init) if init else None
        if self.init_path is not None:
            self.settings_from_elsewhere = ("model.",)
        super().__init__(config, run_dir, device=device, resume=resume, show_progress=show_progress)

    def build(self) -> None:
        cfg = self.config
        if self.init_path is not None:
            start = load_model(self.init_path)  # float32 whatever the file's dtype
            self.config = cfg = dataclasses.replace(cfg, model=dataclasses.replace(start.config, role="teacher"))
            self.first_stage = frozen(start.first_stage.to(self.device))
            self.network = start.unet.to(self.device).train().requires_grad_(True)
        else:
            if cfg.model is None:
                raise ConfigError("model: a teacher's architecture is needed (a preset's, or a model section)")
            self.first_stage = frozen(load_first_stage(cfg.model, self.first_stage_path).to(self.device))
            self.network = build_network(cfg.model).to(self.device).train()
        self.schedule = Schedule(cfg.model.schedule)
        ddp = DistributedDataParallel(self.network) if self.world > 1 else self.network
        self.denoiser = denoiser(ddp, cfg.model, self.schedule)
        self.ema = EMA(self.network, cfg.optim.ema_rate, cfg.optim.ema_warmup)
        self.opt = self.make_optimizer(self.network, scheduled_lr(cfg.optim, 1))

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        lq, gt = batch["lq"].to(self.device), batch["gt"].to(self.device)
        with torch.no_grad(), self.forward_context():
            z_0 = self.first_stage.encode(gt).float()
            z_y = encode_upsampled(self.first_stage, lq, self.config.model.scale).float()
        n = z_0.shape[0]
        t = draw_timesteps(self.schedule.num_steps, n, self.config.teacher.t_last_prob, self.rng).to(self.device)
        noise = torch.randn(z_0.shape, generator=self.rng).to(z_0)
        z_t = q_sample(self.schedule, z_0, z_y, t, noise)
        with self.forward_context():
            pred = self.denoiser(z_t, t, lq, z_y).float()
        mse = (pred - z_0).pow(2).flatten(1).mean(1)
        self.check_finite({"mse": mse})
        self.set_scheduled_lr(self.opt)
        self.optimizer_step(self.opt, mse.mean())
        self.scaler.update()
        self.ema.update(self.network, self.step + 1)
        return {"mse": float(mse.detach().mean())}

    @property
    def scale(self) -> int:
        return self.config.model.scale

    def final_model(self, network: nn.Module) -> SRModel:
        """A model of ``network`` (the EMA's or the raw one) with the first stage (modules shared, not copied)."""
        return SRModel(self.config.model, unet=network, first_stage=self.first_stage)

    def validation_output(self, network: nn.Module, lq: Tensor) -> Tensor:
        """The teacher's T-step samples from a fixed prior noise."""
        return super_resolve(self.final_model(network), lq, steps=self.schedule.num_steps,
                             generator=torch.Generator().manual_seed(0))

    def write_final(self, path: Path, network: nn.Module) -> None:
        """A tadsr model file (``save_model``)."""
        save_model(self.final_model(network), path)

    def state(self) -> dict[str, Any]:
        return {"model": self.network.state_dict(), "ema": self.ema.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        self.network.load_state_dict(checkpoint["model"])
        self.ema.model.load_state_dict(checkpoint["ema"])
        self.opt.load_state_dict(checkpoint["opt"])
