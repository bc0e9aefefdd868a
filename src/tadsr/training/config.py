"""Training configs: frozen dataclasses, presets, YAML files and ``key=value`` overrides.

A ``TrainConfig`` is saved in every checkpoint. YAML and overrides map onto it strictly: an unknown key is an error.
Presets (``train_config(name, command)``):

* ``realsr-x4`` — the paper's SR x4 settings (docs/implementation-notes.md §4.1, §1.4): Swin-UNet + VQ-f4, T=15,
  Real-ESRGAN degradation at GT 256; distillation: batch 8, 30k steps, lambda (1, 0.02); teacher: ResShift v1
  recipe, batch 64;
* ``faceir`` — faces: VQ-f8, T=4, GFPGAN degradation at 512, lambda (0.1, 0.2), batch 7;
* ``tiny`` — a CPU preset: a small Swin-UNet on the lossless pixel-unshuffle stage, GT 64, batch 4.

A distillation's teacher family (``tadsr.training.families``: a tadsr teacher file, or a diffusers folder) has its
own settings in the ``family`` section, tagged by ``kind`` as the model's first stage is; the TAD-SR settings both
families use (``distill``: the loss weights, ``hsd_t_max``, ``dis_t_max``, ...) exist once. ``model`` is what was
trained: the teacher's architecture for a ResShift student, none for a diffusers student (its architecture is the
teacher folder's).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tadsr.config import ModelConfig, from_dict, to_dict
from tadsr.config_checks import check_ranges
from tadsr.errors import ConfigError, first_line

Command = Literal["distill", "train-teacher"]
TRAIN_PRESETS = ("realsr-x4", "faceir", "tiny", "seesr")


@dataclass(frozen=True)
class DataConfig:
    """HR images (``path``: folder or .txt list) degraded on the fly by ``degradation`` at ``gt_size``.

    ``crop``: ``"resize"`` takes a square of side min(H, W) resized to ``gt_size`` (ResShift's, for photos near
    the GT size); ``"native"`` cuts multi-scale crops at the photo's native resolution (``tadsr.data.photos``:
    downscale by s ~ U[``scale_range``], crop, 8 flips/rotations, a gray copy with ``gray_prob``), decoding each
    photo once into ``cache_dir`` (empty: ``RUN_DIR/photo-cache``). ``texture_ref`` > 0 down-weights flat native
    crops: a candidate is kept with probability min(1, its mean luma gradient / ``texture_ref``), up to
    ``texture_tries`` candidates (``tadsr.data.photos``; 0 = every crop as drawn).
    """

    path: str = ""
    degradation: str = "realesrgan"
    gt_size: int = 256
    workers: int = 2
    val_path: str = ""  # HR images for validation; empty = the first ``val_count`` training images
    val_count: int = 4
    crop: Literal["resize", "native"] = "resize"
    scale_range: tuple[float, float] = (0.25, 1.0)
    gray_prob: float = 0.0
    cache_dir: str = ""
    texture_ref: float = 0.0
    texture_tries: int = 8

    def __post_init__(self) -> None:
        if self.crop not in ("resize", "native"):
            raise ConfigError(f"data.crop {self.crop!r}: choose 'resize' or 'native'")
        if self.texture_ref > 0 and self.crop != "native":
            raise ConfigError(f"data.texture_ref = {self.texture_ref}: texture-aware crops need data.crop=native")
        check_ranges(self, "data", {"gt_size": (8, 8192), "workers": (0, 256), "val_count": (0, 100000),
                                    "scale_range": (0.01, 1), "gray_prob": (0, 1),
                                    "texture_ref": (0, 255), "texture_tries": (1, 1000)})


@dataclass(frozen=True)
class OptimConfig:
    """AdamW for the generator (student or teacher) and the discriminator; linear warm-up of the generator only.

    ``ema_rate``: the EMA's rate; ``ema_warmup`` > 0 makes it rise with the step as 1 - (1 + step)^-ema_warmup up to
    ``ema_rate`` (k-diffusion's EMA warm-up with inv_gamma 1; 2/3 or 3/4 are its usual powers), so that the EMA of a
    short run follows the network it averages instead of the copy it started from (a distilled student's EMA starts
    as the teacher: 0.995^200 = 37% of it after 200 steps at a constant 0.995). 0: the constant rate.
    """

    lr: float = 5e-5
    lr_d: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 5000
    milestones: tuple[int, ...] = (500000,)
    ema_rate: float = 0.999
    ema_warmup: float = 0.0
    grad_clip: float = 0.0  # > 0: clip each optimiser's gradient norm to it (TAD-SeeSR's train.sh: 1.0); 0: none

    def __post_init__(self) -> None:
        check_ranges(self, "optim", {"lr": (0, 1), "lr_d": (0, 1), "weight_decay": (0, 1), "betas": (0, 0.999999),
                                     "warmup": (0, None), "milestones": (0, None), "ema_rate": (0, 1),
                                     "ema_warmup": (0, 10), "grad_clip": (0, 1e6)})


@dataclass(frozen=True)
class DistillConfig:
    """The TAD-SR objective L = L_distill + lambda_score L_score + lambda_adv L_adv and the ablation switches.

    ``score_distill`` picks L_score: HSD (paper Eq. 8, the default) or SDS (Eq. 5, the ablation); ``lambda_score``
    weights either (it was ``lambda_hsd`` until tadsr 0.1, still accepted with a warning).

    ``lambda_distill`` weights L_distill (1 in the paper's Eq. 11; TAD-SeeSR's train.sh: 0.2).

    ``hsd_t_min``, ``hsd_t_max``: HSD's t' from the teacher process's timesteps [hsd_t_min, hsd_t_max) every
    ``hsd_t_step`` (TAD-SeeSR's code: 20, 40, ..., 880 = ``hsd_t_min=20 hsd_t_max=881 hsd_t_step=20``); hsd_t_max 0:
    the family's default (ResShift: 3 of T=15, the paper's steps 1-3; a diffusers teacher: 200 of 1000, the same
    small-t end; SeeSR: 881, the authors' top); hsd_t_min 0 is the paper's (t' = 0 included; a weak teacher's
    x0-hat at t' = 0 can be worse than its input, and HSD's factor is largest there).

    ``dis_t_min``, ``dis_t_max``, ``dis_t_step``: the discriminator's t from [dis_t_min, dis_t_max) every
    ``dis_t_step``; dis_t_max 0: [0, T-1), the paper's. ``dis_t_per_batch``: one t for the whole batch (TAD-SeeSR's
    code) instead of one per sample. ``hinge``: the discriminator's hinge on each of its logits, then their mean
    (``per-logit``, the authors' code) or on the sample's mean logit (``mean``, tadsr 0.1's;
    ``tadsr.losses.adversarial``).

    ``uniform_noise``, a quirk of the authors' code (docs/implementation-notes.md §4.9; off by default, the paper's
    method): rand instead of randn in the HSD and discriminator perturbations. The ResShift code's other quirks are
    settings of its family (``ResShiftFamily``).

    ``score_target``: what HSD compares the student with (Eq. 8's z^tch): ``"teacher"``, the teacher's T-step
    output from the same z_T (the paper), or ``"gt"``, the ground truth's latent E(x_gt) (the authors' code's
    ``score_distill_target`` option, docs/implementation-notes.md §4.4). With ``"gt"`` the direction
    g = eps(z_t'^stu) - eps(z_t'^gt) is zero when the student equals the ground truth instead of the teacher.
    """

    score_distill: Literal["hsd", "sds", "none"] = "hsd"
    discriminator: Literal["time-aware", "plain", "none"] = "time-aware"
    lambda_distill: float = 1.0
    lambda_score: float = 1.0
    lambda_adv: float = 0.02
    hsd_t_max: int = 0
    hsd_t_min: int = 0
    hsd_t_step: int = 1
    score_target: Literal["teacher", "gt"] = "teacher"
    dis_t_max: int = 0
    dis_t_min: int = 0
    dis_t_step: int = 1
    dis_t_per_batch: bool = False
    hinge: Literal["per-logit", "mean"] = "per-logit"
    c_dim: int = 64
    teacher_cache: int = 0  # > 0: precompute this many (LR, HR, noise, teacher target) tuples and train on them
    uniform_noise: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, "distill", {"lambda_distill": (0, 1e6), "lambda_score": (0, 1e6), "lambda_adv": (0, 1e6),
                                       "hsd_t_max": (0, 100000), "hsd_t_min": (0, 100000), "hsd_t_step": (1, 100000),
                                       "dis_t_max": (0, 100000), "dis_t_min": (0, 100000),
                                       "dis_t_step": (1, 100000), "c_dim": (1, 4096), "teacher_cache": (0, 10**7)})


@dataclass(frozen=True)
class TeacherConfig:
    """Teacher training (Eq. 4). ``t_last_prob``: the share of samples trained at t = T-1, the rest uniform over
    0..T-1 (0 = ResShift's uniform t). The one-step student starts from, and runs at, t = T-1, where the teacher's
    x0-hat is its posterior-mean estimate from the LR image alone; uniform t gives that step 1/T of the training."""

    t_last_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.t_last_prob <= 1:
            raise ConfigError(f"teacher.t_last_prob {self.t_last_prob}: need a probability in [0, 1]")


@dataclass(frozen=True)
class RunConfig:
    steps: int = 30000
    batch_size: int = 8
    seed: int = 123456
    amp: Literal["none", "bf16", "fp16"] = "none"
    log_every: int = 10
    save_every: int = 2000
    val_every: int = 2000
    keep_last: int = 3
    dist_timeout_minutes: float = 30.0  # under torchrun: a rank that waits longer for the others ends the job
    raw_weights: bool = False  # also validate the raw (non-EMA) weights and write them as final-raw.safetensors

    def __post_init__(self) -> None:
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"run.amp = {self.amp!r}: needs one of 'none', 'bf16', 'fp16'")
        check_ranges(self, "run", {"steps": (1, None), "batch_size": (1, 65536), "seed": (0, 2**63 - 1),
                                   "log_every": (1, None), "save_every": (1, None), "val_every": (1, None),
                                   "keep_last": (0, None), "dist_timeout_minutes": (0.1, 10080)})


@dataclass(frozen=True)
class ResShiftFamily:
    """A ResShift teacher: a tadsr model file (``tadsr convert`` / ``tadsr train-teacher``;
    ``tadsr.training.families.resshift``). Quirks of the authors' code (docs/implementation-notes.md §4.9), each
    off by default (the paper's method): ``double_scaling`` (the teacher sees x / (kappa^2 eta + 1) in HSD),
    ``unfrozen_teacher`` (the teacher's weights collect gradients, never used)."""

    double_scaling: bool = False
    unfrozen_teacher: bool = False


@dataclass(frozen=True)
class DiffusersFamily:
    """An SD-based teacher: a diffusers folder of the ``StableDiffusionUpscalePipeline`` layout (paper Appendix B;
    ``tadsr.training.families.diffusers``). ``prompt``: embedded once by the folder's text encoder and stored with
    the student. ``noise_level``: the LR image's noise level (the x4 upscaler's ``noise_level``). ``teacher_steps``:
    the teacher's sampler steps for L_distill's target. ``student_t``: the student's timestep (-1: the last, T-1)."""

    prompt: str = ""
    noise_level: int = 20
    teacher_steps: int = 20
    student_t: int = -1

    def __post_init__(self) -> None:
        check_ranges(self, "family", {"noise_level": (0, 1000), "teacher_steps": (1, 1000),
                                      "student_t": (-1, 100000)})


@dataclass(frozen=True)
class SeeSRFamily:
    """A SeeSR teacher: a folder of ``tadsr convert seesr`` (paper Appendix B, the authors' TAD-SeeSR; ``tadsr.
    training.families.seesr``, docs/seesr-distill.md). Each value is the authors' (LearningHx/TAD-SR
    ``TAD-SeeSR/train_tadsr.py``, ``train.sh``) unless said:

    * ``trainable``: what of the student (a copy of SeeSR's ControlNet and UNet) learns: ``image-attention``, every
      image cross-attention module of both and the ControlNet's conditioning embedding (the authors'); ``full``,
      both networks whole; ``lora``, a LoRA of rank ``lora_rank`` on every attention projection of the UNet (to_q,
      to_k, to_v, to_out.0), merged into the weights of the student folder written at the end.
    * ``student_start``: the latent the student's one step starts from, noised to t = 999: ``lr``, the LR image's
      (as TAD-SeeSR runs at inference; tadsr's default), or ``gt``, the ground truth's (the authors' training).
    * ``teacher_condition``: the image the teacher's ControlNet and DAPE see in HSD and the discriminator's
      features: ``lr``, the x4 bicubic LR (tadsr's default, as at inference), or ``gt`` (the authors' code, by an
      argument-parsing slip: ``type=bool`` makes any given value true).
    * ``teacher_steps``, ``guidance``: SeeSR's sampler (DDPM with classifier-free guidance) for L_distill's
      target, from the LR image as the authors' precomputed SeeSR outputs (SeeSR's test defaults, 50 and 5.5).
    """

    trainable: Literal["image-attention", "full", "lora"] = "image-attention"
    lora_rank: int = 8
    student_start: Literal["lr", "gt"] = "lr"
    teacher_condition: Literal["lr", "gt"] = "lr"
    teacher_steps: int = 50
    guidance: float = 5.5

    def __post_init__(self) -> None:
        for key, allowed in (("trainable", ("image-attention", "full", "lora")), ("student_start", ("lr", "gt")),
                             ("teacher_condition", ("lr", "gt"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"family.{key} = {getattr(self, key)!r}: choose from {', '.join(allowed)}")
        check_ranges(self, "family", {"lora_rank": (1, 4096), "teacher_steps": (1, 1000), "guidance": (0, 100)})


# The teacher families, by the ``kind`` tag of the ``family`` section (the kinds ``open_teacher`` knows).
FAMILIES: dict[str, type] = {"resshift": ResShiftFamily, "diffusers": DiffusersFamily, "seesr": SeeSRFamily}
FamilyConfig = ResShiftFamily | DiffusersFamily | SeeSRFamily


def family_kind(family: FamilyConfig) -> str:
    """The ``kind`` tag of a family config."""
    return next(kind for kind, cls in FAMILIES.items() if isinstance(family, cls))


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig | None  # None: a diffusers student (its architecture is the teacher folder's)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    family: FamilyConfig = field(default_factory=ResShiftFamily)

    def __post_init__(self) -> None:
        if self.model is None:
            return  # the teacher family checks its own sizes (``DistillTeacher.gt_multiple``)
        multiple = self.model.scale * self.model.lr_multiple  # training crops are not padded
        if self.data.gt_size % multiple:
            raise ConfigError(f"data.gt_size = {self.data.gt_size}: this model needs a multiple of {multiple} "
                              f"(scale {self.model.scale} x its LR multiple {self.model.lr_multiple})")


def infer_train_preset(model: ModelConfig) -> str:
    """The training preset whose architecture ``model`` has: realsr-x4 or faceir for the official networks (their
    recipes: batch, GT size, degradation, lambdas), tiny for anything else."""
    from tadsr.presets import model_config

    for name in ("realsr-x4", "faceir"):
        official = model_config(name)
        if (model.unet, model.first_stage, model.scale) == (official.unet, official.first_stage, official.scale):
            return name
    return "tiny"


def train_config(name: str, command: Command = "distill") -> TrainConfig:
    """The preset ``name`` for ``command`` (see the module docstring)."""
    from tadsr.presets import model_config

    distill = command == "distill"
    if name == "realsr-x4":
        return TrainConfig(
            model=model_config("realsr-x4", role="student" if distill else "teacher"),
            data=DataConfig(degradation="realesrgan", gt_size=256),
            run=RunConfig(steps=30000 if distill else 300000, batch_size=8 if distill else 64),
        )
    if name == "faceir":
        return TrainConfig(
            model=model_config("faceir", role="student" if distill else "teacher"),
            data=DataConfig(degradation="face-gfpgan", gt_size=512),
            run=RunConfig(steps=30000 if distill else 300000, batch_size=7 if distill else 64),
            distill=DistillConfig(lambda_score=0.1, lambda_adv=0.2),
        )
    if name == "tiny":
        return TrainConfig(
            model=model_config("tiny", role="student" if distill else "teacher"),
            data=DataConfig(degradation="realesrgan", gt_size=64, workers=0, val_count=2),
            optim=OptimConfig(lr=2e-4, lr_d=2e-4, warmup=20),
            run=RunConfig(steps=200, batch_size=4, seed=0, log_every=5, save_every=50, val_every=100),
        )
    if name == "seesr":
        if not distill:
            raise ConfigError("the seesr preset distils a SeeSR teacher; tadsr train-teacher does not train SeeSR")
        return seesr_recipe()
    raise ConfigError(f"unknown training preset {name!r}; choose from {', '.join(TRAIN_PRESETS)}")


def seesr_recipe() -> TrainConfig:
    """The ``seesr`` preset: TAD-SeeSR's recipe (LearningHx/TAD-SR ``TAD-SeeSR/train.sh`` and ``train_tadsr.py``;
    docs/seesr-distill.md lists each value and where tadsr's default differs): GT 512, batch 8 (8 GPUs x 1), 30k
    steps, fp16; AdamW 2e-5 with weight decay 1e-2 and no warm-up, gradient norm clipped to 1, EMA 0.99;
    L = 0.2 L_distill + HSD + 0.2 L_adv with HSD's and the discriminator's t from {20, 40, ..., 880}, one t per
    batch for the discriminator; the family's ``SeeSRFamily`` defaults."""
    return TrainConfig(
        model=None,
        data=DataConfig(degradation="realesrgan", gt_size=512),
        optim=OptimConfig(lr=2e-5, lr_d=2e-5, weight_decay=1e-2, warmup=0, ema_rate=0.99, grad_clip=1.0),
        run=RunConfig(steps=30000, batch_size=8, amp="fp16"),
        distill=DistillConfig(lambda_distill=0.2, lambda_score=1.0, lambda_adv=0.2, hsd_t_min=20, hsd_t_max=881,
                              hsd_t_step=20, dis_t_min=20, dis_t_max=881, dis_t_step=20, dis_t_per_batch=True),
        family=SeeSRFamily(),
    )


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["model"] = None if config.model is None else to_dict(config.model)
    out["family"] = {"kind": family_kind(config.family), **out["family"]}
    return out


# Renamed keys: old (section, key) -> today's, accepted with a FutureWarning for one release.
RENAMED_KEYS = {
    ("distill", "lambda_hsd"): ("distill", "lambda_score"),
    ("distill", "double_scaling"): ("family", "double_scaling"),
    ("distill", "unfrozen_teacher"): ("family", "unfrozen_teacher"),
    ("sd", "prompt"): ("family", "prompt"),
    ("sd", "noise_level"): ("family", "noise_level"),
    ("sd", "teacher_steps"): ("family", "teacher_steps"),
    ("sd", "student_t"): ("family", "student_t"),
    ("sd", "hsd_t_max"): ("distill", "hsd_t_max"),
    ("sd", "dis_t_max"): ("distill", "dis_t_max"),
}
# the defaults of tadsr 0.1's ``sd`` section: an older run whose values differ distilled a diffusers teacher
_OLD_SD_DEFAULTS = {"prompt": "", "noise_level": 20, "teacher_steps": 20, "student_t": -1, "hsd_t_max": 200,
                    "dis_t_max": 0}


def _renamed(section: str, key: str, warn: bool = True) -> tuple[str, str]:
    new = RENAMED_KEYS.get((section, key))
    if new is None:
        return section, key
    if warn:
        warnings.warn(f"config key {section}.{key} is now {'.'.join(new)} (the old name goes in the next release)",
                      FutureWarning, stacklevel=4)
    return new


def _migrate(data: dict[str, Any], warn: bool) -> dict[str, Any]:
    """A config dict in today's layout: renamed keys moved (``RENAMED_KEYS``). A dict of tadsr 0.1, with an ``sd``
    section and no ``family``, gets the family its settings describe: diffusers where its ``sd`` values differ from
    that release's defaults (``sd.hsd_t_max`` and ``sd.dis_t_max`` then replace ``distill``'s, and the placeholder
    model goes), else resshift (the ``sd`` section dropped: that release ignored it)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    old_sd = data.pop("sd", None) if "family" not in data else None
    if isinstance(old_sd, dict):
        if any(old_sd.get(k, v) != v for k, v in _OLD_SD_DEFAULTS.items()):
            data["family"] = {"kind": "diffusers"}
            data["model"] = None
            for key in ("hsd_t_max", "dis_t_max", "double_scaling", "unfrozen_teacher"):  # unused by that trainer
                data.setdefault("distill", {}).pop(key, None)
            data["sd"] = old_sd
        else:
            data["family"] = {"kind": "resshift"}
    for section, values in list(data.items()):
        if not isinstance(values, dict) or section == "model":
            continue
        for key in list(values):
            new_section, new_key = _renamed(section, key, warn)
            if (new_section, new_key) != (section, key):
                data.setdefault(new_section, {})[new_key] = values.pop(key)
    if not data.get("sd", True):
        del data["sd"]
    return data


def _family_from_dict(data: Any) -> FamilyConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"family: needs a mapping of keys, got {data!r}")
    values = dict(data)
    kind = values.pop("kind", "resshift")
    if kind not in FAMILIES:
        raise ConfigError(f"family.kind = {kind!r}: choose from {', '.join(FAMILIES)}")
    other = [k for k in values if k not in {f.name for f in dataclasses.fields(FAMILIES[kind])}]
    if other:
        owners = [name for name, cls in FAMILIES.items() if other[0] in {f.name for f in dataclasses.fields(cls)}]
        whose = f"a setting of the {owners[0]} family" if owners else "not a setting of any teacher family"
        raise ConfigError(f"family.{other[0]}: {whose}; this run's teacher is of the {kind} family "
                          f"(its settings: {', '.join(f.name for f in dataclasses.fields(FAMILIES[kind])) or 'none'})")
    return from_dict(FAMILIES[kind], values, "family")


def config_from_dict(data: dict[str, Any], warn_renamed: bool = True) -> TrainConfig:
    """``warn_renamed``: warn about old key names (a user's file or override); off for the configs that runs of
    an older release saved in their checkpoints, which are migrated silently (``_migrate``)."""
    data = _migrate(data, warn_renamed)
    if "model" not in data:
        raise ConfigError("a training config needs a 'model' section")
    model_data = data.pop("model")
    model = None if model_data is None else from_dict(ModelConfig, model_data)
    family = _family_from_dict(data.pop("family", {}))
    sections = {"data": DataConfig, "optim": OptimConfig, "run": RunConfig, "distill": DistillConfig,
                "teacher": TeacherConfig}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown training config section(s): {', '.join(unknown)}")
    return TrainConfig(model=model, family=family, **{k: from_dict(cls, data.get(k, {}), k)
                                                      for k, cls in sections.items()})


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``section.key=value`` (nested: ``model.unet.model_channels=96``); values parse as JSON, else strings.
    A key of the other teacher family, or a ``model.*`` key where the run has no model (a diffusers student), is a
    ConfigError naming it."""
    data = config_to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.split(".")
        if len(parts) == 2:
            parts = list(_renamed(parts[0], parts[1]))
        if parts[0] == "model" and data.get("model") is None and len(parts) > 1:
            raise ConfigError(f"{key}: this teacher's student has the teacher folder's architecture (a diffusers "
                              "or SeeSR folder); drop the setting")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {key!r}: no section {part!r}")
            node = node[part]
        if parts[-1] not in node and parts[0] == "family" and len(parts) == 2:
            _family_from_dict({**node, parts[-1]: None})  # names the family the key belongs to
        if parts[-1] not in node:
            raise ConfigError(f"override {key!r}: unknown key {parts[-1]!r}")
        node[parts[-1]] = _parse_value(value)
    return config_from_dict(data)


def flat_settings(config: TrainConfig) -> dict[str, Any]:
    """Every setting of ``config`` as ``{"section.key[.subkey]": value}``, the keys the overrides use."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            out[prefix] = node

    walk("", config_to_dict(config))
    return out


def check_model_overrides(model: ModelConfig, overrides: Sequence[str], whose: str, why: str) -> None:
    """A run whose network comes from a file (a distilled student is its teacher's architecture and schedule; a
    fine-tuned teacher is its ``--init`` file's) takes its ``model`` from there, so a ``model.*`` override can only
    restate the file's value: any other is a ConfigError naming each key, the value ``whose`` it is ("the
    teacher's") and ``why``, before any work."""
    given = [item for item in overrides if item.startswith("model.")]
    if not given:
        return
    base = dataclasses.replace(train_config("tiny"), model=model)
    before, after = flat_settings(base), flat_settings(apply_overrides(base, given))
    changed = [f"{k}={after[k]} ({whose}: {before[k]})" for k in after
               if k.startswith("model.") and k != "model.role" and after[k] != before[k]]
    if changed:
        raise ConfigError(f"{', '.join(changed)}: {why}")


# what a resumed run takes from the command line; every other setting is the checkpoint's own
RESUMABLE_SETTINGS = ("run.steps", "run.log_every", "run.save_every", "run.val_every", "run.keep_last",
                      "run.dist_timeout_minutes", "run.raw_weights", "data.workers")


def resumed_config(saved: TrainConfig, given: TrainConfig,
                   not_compared: Sequence[str] = ()) -> tuple[TrainConfig, list[str]]:
    """The config of a resumed run: the checkpoint's, with the bookkeeping settings of ``RESUMABLE_SETTINGS`` from
    ``given`` (length, logging, saving, workers); and the other settings where ``given`` differs, as
    ``"key=given (kept: saved)"``, for the one-line warning that they were not applied. Keys starting with a prefix
    in ``not_compared`` are settings the trainer does not take from its config (a student's ``model.``)."""
    mine, theirs = flat_settings(saved), flat_settings(given)
    taken = [f"{k}={json.dumps(theirs[k])}" for k in RESUMABLE_SETTINGS if k in theirs and theirs[k] != mine.get(k)]
    ignored = [f"{k}={theirs[k]} (kept: {mine[k]})" for k in theirs
               if k not in RESUMABLE_SETTINGS and k in mine and theirs[k] != mine[k]
               and not k.startswith(tuple(not_compared))]
    return (apply_overrides(saved, taken) if taken else saved), ignored


def for_teacher(config: TrainConfig, kind: str, student: ModelConfig | None) -> TrainConfig:
    """``config`` for a distillation of a teacher of family ``kind`` whose student is ``student`` (None: no tadsr
    model, a diffusers student): the family section of that kind (kept where the config already has it, a
    ConfigError where the config sets another family's settings) and the student's model."""
    current = family_kind(config.family)
    if current != kind and config.family != FAMILIES[current]():
        raise ConfigError(f"family: the config sets {current} settings ({config.family}), but the teacher is of the "
                          f"{kind} family")
    family = config.family if current == kind else FAMILIES[kind]()
    model = None if student is None else dataclasses.replace(student, role="student")
    return dataclasses.replace(config, family=family, model=model)


# the sections a command does not read: an override of one is an error, not a setting silently recorded
OTHER_COMMANDS_SECTIONS: dict[str, dict[str, str]] = {
    "distill": {"teacher": "tadsr train-teacher"},
    "train-teacher": {"distill": "tadsr distill", "family": "tadsr distill (the teacher families)"},
}


def resolve_config(command: Command, config_path: str | Path | None = None, preset: str = "tiny",
                   data_path: str | None = None, steps: int | None = None, seed: int | None = None,
                   overrides: Sequence[str] = (), family: str | None = None,
                   student: ModelConfig | None = None, init: ModelConfig | None = None) -> TrainConfig:
    """The config of a training command: a YAML file (or the preset), then ``--data``/``--steps``/``--seed``, then
    the ``key=value`` overrides. ConfigError names the file or the key. A distillation names its teacher's
    ``family`` and ``student`` (``for_teacher``; ``tadsr.training.families.distill_config`` finds both from the
    teacher's path): a ``model.*`` override may then only restate the teacher's architecture. So for ``init``, the
    model config of the file ``train-teacher --init`` fine-tunes. A key set both by an override and by its flag
    (``run.steps=`` and ``--steps``) is a ConfigError: neither silently wins."""
    flags = {"data.path": ("--data", data_path), "run.steps": ("--steps", steps), "run.seed": ("--seed", seed)}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in flags and flags[key][1] is not None:
            raise ConfigError(f"{key}: set both by {flags[key][0]} {flags[key][1]} and by {item}; give one")
    for item in overrides:
        section = item.split(".", 1)[0]
        if section in OTHER_COMMANDS_SECTIONS[command]:
            raise ConfigError(f"{item.split('=', 1)[0]}: a setting of {OTHER_COMMANDS_SECTIONS[command][section]}; "
                              f"tadsr {command} does not use it")
    config = load_config_file(config_path) if config_path else train_config(preset, command)
    if family is not None:
        config = for_teacher(config, family, student)
        if student is not None:
            check_model_overrides(student, overrides, "the teacher's", "the student takes its teacher's "
                                  "architecture and schedule; drop the setting (or train a teacher with it)")
    if init is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(init, role="teacher"))
        check_model_overrides(init, overrides, "the --init file's", "--init fine-tunes that file's architecture "
                              "and schedule; drop the setting (or train a teacher from random weights with it)")
    extra = list(overrides)
    if data_path is not None:
        extra.append(f"data.path={data_path}")
    if steps is not None:
        extra.append(f"run.steps={steps}")
    if seed is not None:
        extra.append(f"run.seed={seed}")
    return apply_overrides(config, extra)


def load_config_file(path: str | Path) -> TrainConfig:
    """A YAML (or JSON) file with the sections of TrainConfig; a ``preset`` key starts from a preset."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable YAML config ({first_line(err)})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections")
    preset = data.pop("preset", None)
    command = data.pop("command", "distill")
    base = config_to_dict(train_config(preset, command)) if preset else {}
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = _merge(base[section], values)
        else:
            base[section] = values
    try:
        return config_from_dict(base)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
