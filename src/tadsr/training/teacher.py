"""Training a ResShift teacher (paper Eq. 4; reference.md §1.4): x0 prediction, plain MSE in latent space.

t ~ U{0..T-1} per sample, z_t = z_0 + eta_t (z_y - z_0) + kappa sqrt(eta_t) eps (Eq. 1), and the network sees
z_t / sqrt(kappa^2 eta_t + 1); loss = mean over (C, H, W) of (f(z_t, t, y) - z_0)^2 (weights 1, as every released
config). The first stage is frozen (VQ weights loaded with ``first_stage``, or the weight-free pixel-unshuffle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tadsr.checkpoints import load_official
from tadsr.diffusion.samplers import predict_x0, sample
from tadsr.diffusion.schedule import Schedule, q_sample
from tadsr.inference.pipeline import encode_upsampled
from tadsr.model import SRModel, build_first_stage
from tadsr.nets.unet import SwinUNet
from tadsr.training.ema import EMA
from tadsr.training.trainer import Trainer, frozen, generator_lr


def draw_timesteps(num_steps: int, n: int, last_prob: float, generator: torch.Generator) -> Tensor:
    """(n,) int64 code indices: T-1 with probability ``last_prob``, else uniform over 0..T-1 (Eq. 4's t ~ U)."""
    t = torch.randint(0, num_steps, (n,), generator=generator)
    if last_prob > 0:
        t = torch.where(torch.rand(n, generator=generator) < last_prob, num_steps - 1, t)
    return t


class TeacherTrainer(Trainer):
    command = "train-teacher"

    def __init__(self, config: Any, run_dir: Path, first_stage: str | Path | None = None, **kwargs: Any) -> None:
        self.first_stage_path = Path(first_stage) if first_stage else None
        super().__init__(config, run_dir, **kwargs)

    def build(self) -> None:
        cfg = self.config
        self.first_stage = build_first_stage(cfg.model.first_stage).to(self.device)
        has_weights = any(True for _ in self.first_stage.parameters())
        if has_weights and self.first_stage_path is None:
            raise ValueError("this model's first stage is a VQ autoencoder: pass its weights (--first-stage FILE)")
        if self.first_stage_path is not None:
            load_official(self.first_stage, self.first_stage_path)
        frozen(self.first_stage)
        self.schedule = Schedule(cfg.model.schedule)
        self.model = SwinUNet(cfg.model.unet).to(self.device).train()
        self.model_ddp: nn.Module = DistributedDataParallel(self.model) if self.world > 1 else self.model
        self.ema = EMA(self.model, cfg.optim.ema_rate)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=generator_lr(o, 1), betas=o.betas,
                                     weight_decay=o.weight_decay)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        lq, gt = batch["lq"].to(self.device), batch["gt"].to(self.device)
        with torch.no_grad(), self.forward_context():
            z_0 = self.first_stage.encode(gt).float()
            z_y = encode_upsampled(self.first_stage, lq, self.config.model.scale).float()
        n = z_0.shape[0]
        t = draw_timesteps(self.schedule.num_steps, n, self.config.teacher.t_last_prob, self.generator).to(self.device)
        noise = torch.randn(z_0.shape, generator=self.generator).to(z_0)
        z_t = q_sample(self.schedule, z_0, z_y, t, noise)
        with self.forward_context():
            pred = predict_x0(self.model_ddp, self.schedule, z_t, t, lq).float()
        mse = (pred - z_0).pow(2).flatten(1).mean(1)
        self.check_finite({"mse": mse})
        for group in self.opt.param_groups:
            group["lr"] = generator_lr(self.config.optim, self.step + 1)
        self.optimizer_step(self.opt, mse.mean())
        self.scaler.update()
        self.ema.update(self.model)
        return {"mse": float(mse.detach().mean())}

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.ema.model.load_state_dict(checkpoint["ema"])
        self.opt.load_state_dict(checkpoint["opt"])

    def final_model(self) -> SRModel:
        model = SRModel(self.config.model)
        model.unet.load_state_dict(self.ema.model.state_dict())
        model.first_stage.load_state_dict(self.first_stage.state_dict())
        return model

    @torch.no_grad()
    def validation_output(self, lq: Tensor) -> Tensor:
        z_y = encode_upsampled(self.first_stage, lq, self.config.model.scale)
        noise = torch.randn(z_y.shape, generator=torch.Generator().manual_seed(0)).to(z_y)
        z0 = sample(self.ema.model, self.schedule, z_y, lq, noise, sampler="deterministic")
        return self.first_stage.decode(z0).clamp(-1, 1)
