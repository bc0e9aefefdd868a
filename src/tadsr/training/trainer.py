"""The training loop shared by the teacher and the distillation trainers.

A subclass builds its networks (``build``: it sets the trained ``network`` and its ``ema``), runs one iteration
(``train_step``, returning named loss terms), names what goes into a checkpoint (``state``/``load_state``), what a
network (the EMA's, or the raw one) makes of validation images (``validation_output``) and the model file it makes
(``write_final``). The run writes the EMA network as ``final.safetensors``; with ``run.raw_weights`` also the raw one
(``final-raw.safetensors``) and the raw network's validation figures beside the EMA's. This
class owns the rest: seeds, the batch stream, the optimizers' settings and learning-rate schedule, resuming, logging
(tqdm, JSONL, TensorBoard when installed), non-finite-loss stops, validation, checkpoints and torchrun.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from tadsr import distributed
from tadsr.data.datasets import (
    DegradedImageDataset,
    EpochDataset,
    list_images,
    load_rgb,
    square_crop_resize,
    to_chw_tensor,
)
from tadsr.data.degradation import degrade, draw_params
from tadsr.data.degradation import preset as degradation_preset
from tadsr.data.image_io import ImageData, to_uint8, write_image
from tadsr.data.photos import PhotoCropDataset
from tadsr.devices import DTYPES, autocast
from tadsr.errors import ConfigError, TadsrError
from tadsr.fileio import remove_stale_temporaries
from tadsr.metrics import psnr, ssim
from tadsr.nets.common import upsample_lr
from tadsr.training.config import OptimConfig, TrainConfig, config_from_dict, config_to_dict, resumed_config
from tadsr.training.ema import EMA
from tadsr.training.state import capture_rng, restore_rng, resume_checkpoint, save_checkpoint
from tadsr.training.stream import batch_stream


class TrainingError(TadsrError, RuntimeError):
    """A run that cannot go on (non-finite loss, inconsistent ranks); the message says why and where."""


def check_amp(device: torch.device, amp: str) -> None:
    """ConfigError, before anything is built, for a precision the device cannot run."""
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"run.amp = 'bf16': {device} does not support bfloat16; use run.amp=fp16 or none")


def scheduled_lr(optim_config: OptimConfig, step: int) -> float:
    """The teacher's / student's learning rate at ``step`` (1-based): linear warm-up over ``warmup`` steps, then
    x0.5 after each milestone (ResShift's ``adjust_lr``). The discriminator's ``lr_d`` is constant."""
    lr = optim_config.lr * min(1.0, step / max(1, optim_config.warmup))
    return lr * 0.5 ** sum(step > m for m in optim_config.milestones)


class Trainer:
    command = "train"
    # set by ``build``
    network: nn.Module  # the network being trained (its EMA copy is what the run produces)
    ema: EMA
    settings_from_elsewhere: tuple[str, ...] = ()  # config keys (prefixes) the trainer takes from elsewhere
    final_suffix = ".safetensors"  # the model the run writes: RUN_DIR/final{suffix} ("": a folder)

    def __init__(self, config: TrainConfig, run_dir: Path, device: str | torch.device = "cpu", resume: bool = False,
                 show_progress: bool = True) -> None:
        self.rank, self.world, self.device = distributed.init(torch.device(device), config.run.dist_timeout_minutes)
        check_amp(self.device, config.run.amp)
        self.run_dir, self.show_progress = Path(run_dir), show_progress and self.rank == 0
        checkpoint = resume_checkpoint(self.run_dir, self.warn) if resume else None
        if resume and checkpoint is None:
            self.warn(f"{self.run_dir}: no checkpoint yet; starting at step 0")
        if checkpoint is not None:
            saved = config_from_dict(json.loads(checkpoint["config"]), warn_renamed=False)
            # the run length, logging and saving may change on resume; the rest is the run's own config
            config, ignored = resumed_config(saved, config, self.settings_from_elsewhere)
            if ignored:
                self.warn(f"{self.run_dir}: resumed with the run's own settings, not {', '.join(ignored)} "
                          "(a resumed run continues the training it checkpointed; start a new run to change them)")
        self.config = config
        run = config.run
        if run.batch_size % self.world:
            raise ConfigError(f"batch_size {run.batch_size} must be divisible by the {self.world} processes")
        seed = run.seed + self.rank  # per-rank seeds from one seed
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.rng = torch.Generator().manual_seed(seed)  # every random draw of the training step
        self.step = 0
        self.build()
        if checkpoint is not None:
            self.load_state(checkpoint)
            self.step = int(checkpoint["step"])
            saved_ranks = len(checkpoint["rng"])
            if self.rank < saved_ranks:
                restore_rng(checkpoint["rng"][self.rank], self.rng)
            if saved_ranks != self.world:  # ranks without a saved state keep the seed + rank they started with
                self.warn(f"resuming a {saved_ranks}-process run with {self.world}: the data and random draws "
                          "continue, but the weights are bit-identical to an uninterrupted run only at the same "
                          "number of processes")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=run.amp == "fp16")
        if checkpoint is not None and "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])

    # --- subclass interface -------------------------------------------------------------------------------

    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        raise NotImplementedError

    def validation_output(self, network: nn.Module, lq: Tensor) -> Tensor:
        """HR images (N, 3, H, W) in [-1, 1] from LR ``lq`` by ``network`` (the EMA's or the raw one), from a fixed
        noise."""
        raise NotImplementedError

    def write_final(self, path: Path, network: nn.Module) -> None:
        """A model file of ``network`` (the EMA's or the raw one)."""
        raise NotImplementedError

    @property
    def scale(self) -> int:
        """The upscaling factor of the model being trained."""
        raise NotImplementedError

    # --- shared pieces ------------------------------------------------------------------------------------

    def make_optimizer(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        """AdamW over ``module``'s trainable parameters (those with ``requires_grad``: a student may train a
        subset)."""
        o = self.config.optim
        return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, betas=o.betas,
                                 weight_decay=o.weight_decay)

    def set_scheduled_lr(self, optimizer: torch.optim.Optimizer) -> None:
        """The learning rate of the step about to run (``scheduled_lr``)."""
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(self.config.optim, self.step + 1)

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Autocast to run.amp (bf16 / fp16) around forward passes; nothing for fp32."""
        return autocast(self.device, DTYPES.get(self.config.run.amp))  # "none": no autocast

    def warn(self, message: str) -> None:
        """One line on stderr (rank 0): what the run did instead of what was asked, and why."""
        if self.rank == 0:
            tqdm.write(f"tadsr: warning: {message}", file=sys.stderr)

    def _last_good(self) -> str:
        folder = self.run_dir / "checkpoints"
        saved = sorted(folder.glob("step_*.pt")) if folder.is_dir() else []
        return f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was written yet"

    def check_finite(self, terms: dict[str, Tensor]) -> None:
        """TrainingError on every rank when a loss term is not finite on any rank (one small all-reduce per call
        under torchrun), with the message of the first rank that found one."""
        problem = None
        for name, value in terms.items():
            if not torch.isfinite(value).all():
                problem = f"step {self.step + 1}: loss term {name!r} is not finite ({value.mean().item()})"
                break
        if distributed.any_rank(problem is not None, self.device):
            first = next(p for p in distributed.gather(problem) if p)
            raise TrainingError(f"{first}{' on one rank' if self.world > 1 else ''}; stopped, {self._last_good()}")

    def check_weights_finite(self) -> None:
        """Before a checkpoint is kept: a step can leave 1e30 or NaN weights behind a finite loss."""
        for label, module in (("weights", self.network), ("EMA weights", self.ema.model)):
            bad = [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise TrainingError(f"step {self.step}: the {label} are not finite ({bad[0]}"
                                    + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                                    + f"); not saved; stopped, {self._last_good()}")

    def optimizer_step(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
        """Backward, the gradient norm clipped to ``optim.grad_clip`` when set, and step (through the fp16 grad
        scaler when run.amp is fp16; call ``scaler.update()`` once per iteration, after the last step)."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        clip = self.config.optim.grad_clip
        if clip > 0:  # on the true gradients: unscaled first under fp16 (the scaler then does not unscale again)
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip)
        self.scaler.step(optimizer)

    def dataset(self) -> EpochDataset:
        data = self.config.data
        if not data.path:
            raise ConfigError("no training data: pass --data HR_DIR (or set data.path)")
        degradation = degradation_preset(data.degradation)
        if data.crop == "native":
            return PhotoCropDataset(data.path, degradation, data.cache_dir or self.run_dir / "photo-cache",
                                    gt_size=data.gt_size, scale_range=data.scale_range, gray_prob=data.gray_prob,
                                    seed=self.config.run.seed, texture_ref=data.texture_ref,
                                    texture_tries=data.texture_tries)
        return DegradedImageDataset(data.path, degradation, gt_size=data.gt_size, seed=self.config.run.seed)

    def batches(self) -> Any:
        run = self.config.run
        return batch_stream(self.dataset(), run.batch_size // self.world, run.seed, self.rank, self.world,
                            self.step, self.config.data.workers)

    # --- the loop -----------------------------------------------------------------------------------------

    def run(self) -> Path:
        """Train up to ``config.run.steps`` and write ``final.safetensors`` (``final_suffix``); returns its path."""
        run = self.config.run
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.run_dir, self.run_dir / "checkpoints"):  # what a killed write left behind
                for path in remove_stale_temporaries(folder):
                    self.warn(f"{path}: removed a temporary file left by an interrupted write")
            (self.run_dir / "config.json").write_text(json.dumps(config_to_dict(self.config), indent=1))
        stream = self.batches() if self.step < run.steps else iter(())
        writer = self._tensorboard()
        bar = tqdm(total=run.steps, initial=self.step, desc=self.command, disable=not self.show_progress)
        try:
            while self.step < run.steps:
                start = time.perf_counter()
                terms = self.train_step(next(stream))
                self.step += 1
                terms["sec_per_it"] = time.perf_counter() - start
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items() if k != "sec_per_it"})
                if self.step % run.log_every == 0 or self.step == run.steps:
                    terms = distributed.mean(terms, self.device)  # every rank's terms, averaged (a collective)
                    if self.rank == 0:
                        self._log({"step": self.step, **terms}, writer)
                if self.step % run.val_every == 0 or self.step == run.steps:
                    self.validate(writer)
                if self.step % run.save_every == 0 or self.step == run.steps:
                    self.save()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        self.check_ranks_agree()
        final = self.run_dir / f"final{self.final_suffix}"
        if self.rank == 0:
            self.write_final(final, self.ema.model)
            if run.raw_weights:
                with evaluating(self.network):
                    self.write_final(self.run_dir / f"final-raw{self.final_suffix}", self.network)
        distributed.barrier()
        return final

    def save(self) -> None:
        self.check_weights_finite()
        rng = distributed.gather(capture_rng(self.rng))
        if self.rank == 0:
            payload = {"step": self.step, "config": json.dumps(config_to_dict(self.config)), "rng": rng,
                       "scaler": self.scaler.state_dict(), **self.state()}
            save_checkpoint(self.run_dir, self.step, payload, self.config.run.keep_last)
        distributed.barrier()

    def _log(self, record: dict[str, Any], writer: Any) -> None:
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            for key, value in record.items():
                if key != "step":
                    writer.add_scalar(key, value, record["step"])

    def _tensorboard(self) -> Any:
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def check_ranks_agree(self) -> None:
        """Under torchrun, every rank must hold the same trained weights (DDP keeps them in sync)."""
        if self.world == 1:
            return
        sums = distributed.gather(float(sum(p.double().sum() for p in self.ema.model.parameters())))
        if len(set(sums)) != 1:
            raise TrainingError(f"ranks disagree on the weights after step {self.step}: {sums}")

    # --- validation ---------------------------------------------------------------------------------------

    def _validation_set(self) -> tuple[Tensor, Tensor]:
        data = self.config.data
        files = list_images(data.val_path) if data.val_path else list_images(data.path)
        cfg = degradation_preset("face-gfpgan" if data.degradation == "face-gfpgan" else "realesrgan-test")
        gts, lqs = [], []
        for i, path in enumerate(files[: data.val_count]):
            img = load_rgb(path)
            if data.crop == "native":  # the centre at native resolution, as training sees photos
                top, left = max(0, (img.shape[0] - data.gt_size) // 2), max(0, (img.shape[1] - data.gt_size) // 2)
                img = img[top:top + data.gt_size, left:left + data.gt_size]
            gt = to_chw_tensor(square_crop_resize(img, data.gt_size, None))[None]
            hr, lr = degrade(cfg, gt, [draw_params(cfg, torch.Generator().manual_seed(i))])
            gts.append(hr)
            lqs.append(lr)
        return torch.cat(gts), torch.cat(lqs)

    @torch.no_grad()
    def validate(self, writer: Any = None) -> dict[str, float] | None:
        """PSNR/SSIM of the EMA network on the validation set (``val_psnr``, ``val_ssim``) and an image grid (rank 0):
        per sample bicubic | EMA | GT; with ``run.raw_weights`` the raw network too (``val_psnr_raw``,
        ``val_ssim_raw``, a column before the GT)."""
        if self.rank != 0 or self.config.data.val_count <= 0 or not (self.config.data.val_path or
                                                                      self.config.data.path):
            return None
        gt, lq = self._validation_set()
        networks = {"": self.ema.model, "_raw": self.network} if self.config.run.raw_weights else {"": self.ema.model}
        metrics, outs = {}, []
        for suffix, network in networks.items():
            with evaluating(network):
                out = (self.validation_output(network, (lq * 2 - 1).to(self.device)).float().cpu() + 1) / 2
            outs.append(out.clamp(0, 1))
            metrics |= {f"val_psnr{suffix}": float(psnr(outs[-1], gt).mean()),
                        f"val_ssim{suffix}": float(ssim(outs[-1], gt).mean())}
        self._log({"step": self.step, **metrics}, writer)
        up = upsample_lr(lq, self.scale)
        rows = torch.cat([up.clamp(0, 1), *outs, gt], dim=3)
        grid = torch.cat(list(rows), dim=1).permute(1, 2, 0).numpy()
        (self.run_dir / "val").mkdir(parents=True, exist_ok=True)
        write_image(self.run_dir / "val" / f"step_{self.step:08d}.png", ImageData(to_uint8(grid)))
        return metrics


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, its own mode (train for a network being trained) restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)
