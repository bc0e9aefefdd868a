"""Teacher families: what the one distillation trainer (``tadsr.training.distill``) needs from a teacher.

TAD-SR (paper Algorithm 1) distils any diffusion SR teacher whose process gives a forward process, an x0
prediction, the noise an x0 implies and encoder features (``tadsr.diffusion.process.TeacherProcess``). Around that
process a family supplies what differs between teachers: loading, the student network it starts from, the batch's
targets (the teacher's T-step output and the noise it started from), the student's one step, the student file and
validation. ``DistillTeacher`` names them; each family implements it in one module:

* ``resshift`` — a tadsr teacher file (ResShift: Swin-UNet + first stage; ``tadsr convert`` / ``train-teacher``);
* ``diffusers`` — a diffusers folder of an SD-based SR model (``StableDiffusionUpscalePipeline``);
* ``seesr`` — a SeeSR folder (``tadsr convert seesr``): the paper's Appendix B teacher, distilled into TAD-SeeSR.

``open_teacher`` is the one place that decides a teacher's family from its path; ``distill_config`` resolves a
distillation's config for it (the family's section, the student's model, the family's recipe).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from tadsr.checkpoints import model_kind
from tadsr.config import ModelConfig
from tadsr.diffusion.process import TeacherProcess
from tadsr.errors import ConfigError
from tadsr.training.config import FamilyConfig, TrainConfig, family_kind, resolve_config


class DistillTeacher(Protocol):
    """A teacher as the distillation trainer sees it. Batches are dicts of tensors: ``lq`` (N, 3, h, w) and ``gt``
    (N, 3, H, W) in [-1, 1], and what ``targets`` adds (at least ``z_gt``, the GT latent; ``noise``, the student's
    z_T noise; ``z_tch``, the teacher's output from it)."""

    kind: str  # the family's tag in the config's ``family`` section
    process: TeacherProcess
    network: nn.Module  # the teacher's network: it never keeps gradients
    scale: int
    gt_multiple: int  # GT crops are multiples of this (scale x the network's LR multiple)
    feature_channels: list[int]  # the encoder features' channels (the time-aware discriminator's input)
    model_channels: int  # the discriminator's base width
    default_hsd_t_max: int  # ``distill.hsd_t_max`` = 0 means this
    student_model: ModelConfig | None  # what the run's config records as its model (None: not a tadsr model)
    student_suffix: str  # the run's student is RUN_DIR/final{student_suffix} ("": a folder)

    @staticmethod
    def recipe(path: Path) -> tuple[ModelConfig | None, str, str]:
        """Before the teacher is loaded: its student's model config (None: not a tadsr model), the training preset
        whose recipe fits it, and a line saying why (printed when the user named no preset)."""
        ...

    def make_student(self) -> nn.Module:
        """A trainable copy of the teacher's network: the student's start (paper §3.1)."""
        ...

    def targets(self, lq: Tensor, gt: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """What a batch needs beyond (lq, gt), every draw from ``generator`` (cached by ``distill.teacher_cache``)."""
        ...

    def condition(self, batch: dict[str, Tensor]) -> Any:
        """The process's conditioning of a batch (passed unchanged to ``process``)."""
        ...

    def student_x0(self, student: nn.Module, batch: dict[str, Tensor], cond: Any) -> Tensor:
        """The student's one step from the batch's ``noise``: its clean latent (N, C, h, w), with its graph. The
        student's parameters with ``requires_grad`` are the ones it trains (``make_student`` decides)."""
        ...

    def cache_identity(self) -> dict[str, Any]:
        """What the teacher's targets depend on (its weights' digest, its family's settings): a cache key part."""
        ...

    def save_student(self, path: Path, student: nn.Module) -> None:
        """Write the run's model file from the (EMA) student."""
        ...

    def validate(self, student: nn.Module, lq: Tensor) -> Tensor:
        """The student's HR images (N, 3, H, W) in [-1, 1] from ``lq``, from a fixed noise."""
        ...


def family_of(path: str | os.PathLike) -> str:
    """The teacher family of ``path`` (``tadsr.checkpoints.model_kind`` decides what a path is): ``resshift`` for
    a tadsr model file, ``diffusers`` for a diffusers folder, ``seesr`` for a SeeSR folder; anything else is one
    line naming the path."""
    kind = model_kind(path)
    if kind == "tadsr":
        return "resshift"
    if kind in ("diffusers", "seesr"):
        return kind
    raise ConfigError(f"{path}: an {kind} file is not a teacher; pass a tadsr .safetensors teacher (tadsr convert / "
                      "tadsr train-teacher), a diffusers folder or a SeeSR folder (tadsr convert seesr)")


def _family(kind: str) -> Any:
    """The class of family ``kind`` (an explicit factory: grep here to add a family)."""
    if kind == "resshift":
        from tadsr.training.families.resshift import ResShiftTeacher

        return ResShiftTeacher
    if kind == "diffusers":
        from tadsr.training.families.diffusers import DiffusersTeacher

        return DiffusersTeacher
    if kind == "seesr":
        from tadsr.training.families.seesr import SeeSRTeacher

        return SeeSRTeacher
    raise ConfigError(f"family.kind = {kind!r}: no such teacher family")


def open_teacher(path: str | os.PathLike, family: FamilyConfig, device: torch.device,
                 amp: torch.dtype | None = None) -> DistillTeacher:
    """The teacher at ``path`` with its family's settings, on ``device``; ``amp``: the autocast dtype of its
    forward passes (None: fp32). ConfigError when the settings are another family's."""
    kind = family_of(path)
    if family_kind(family) != kind:
        raise ConfigError(f"{path}: a {kind} teacher, but the config's family is {family_kind(family)} (resolve the "
                          "config with tadsr.training.families.distill_config)")
    return _family(kind)(Path(path), family, device, amp)


def distill_config(teacher: str | os.PathLike, config_path: str | os.PathLike | None = None,
                   preset: str | None = None, data_path: str | None = None, steps: int | None = None,
                   seed: int | None = None, overrides: tuple[str, ...] | list[str] = ()) -> tuple[TrainConfig,
                                                                                                 str | None]:
    """A distillation's config for ``teacher`` (``resolve_config`` with the teacher's family and student model),
    and, when neither ``preset`` nor ``config_path`` is given, a line naming the recipe the family chose
    (``recipe``: ResShift, the preset of the teacher's architecture; diffusers, tiny; SeeSR, seesr). ConfigError
    (one line) before any work."""
    kind = family_of(teacher)
    student, default, note = _family(kind).recipe(Path(teacher))
    config = resolve_config("distill", config_path, preset or default, data_path, steps, seed, list(overrides),
                            family=kind, student=student)
    return config, (note if preset is None and config_path is None else None)
