"""Golden values: what the library computes for fixed inputs, recorded to a file and asserted unchanged.

A refactor that claims "behaviour unchanged" re-runs these and compares with the committed file
(``tests/test_golden.py``). Re-record only for an intended change of behaviour or of the embedded weights:

    python tests/golden/golden.py        # writes tests/golden/values.safetensors

Three kinds of value, all through public entry points (so the recorder survives internal rewrites):

* ``upscale.*``: a fixed 24x20 LR crop (padded inside the pipeline) through the embedded student (1 step) and the
  embedded teacher (T steps, deterministic sampler), fp32 on CPU;
* ``teacher.*``: the raw and EMA weights after 3 steps of ``train-teacher`` on the tiny preset (the residual
  denoiser, native crops, 25% of samples at T-1), summarised per tensor;
* ``distill.*``: the student and EMA weights after 3 steps of ``distill`` from that teacher (vanilla distillation and
  HSD through the teacher cache; the discriminator trained beside them but lambda_adv = 0), summarised per tensor, and
  the discriminator's hinge loss at the last step (``distill.d_loss_last``: about 2, within 1e-5).

Re-recorded: ``distill.*`` on 2026-12-07 (the teacher cache now draws chunk k of its pairs from its own seed, so that
the ranks of a torchrun job can share its building: other draws, the same method; ``teacher.*`` and ``upscale.*``
unchanged and checked equal when re-recording).

Why the trained discriminator is not recorded: its heads start from a zero-initialised conv, whose first Adam steps
take the sign of gradients that are float32 rounding noise (the gradient of a bias before a GroupNorm is zero in
exact arithmetic). The same code then gives weights that differ by up to 40% between 1 and 2 threads, or between two
CPUs; through lambda_adv > 0 the student inherits that. What is recorded is the same on every machine tried.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

HERE = Path(__file__).resolve().parent
VALUES = HERE / "values.safetensors"
LR_CROP = (slice(20, 44), slice(24, 44))  # rows, columns of the bundled coffee photo, x4-downscaled


def fixed_lr() -> Tensor:
    """(1, 3, 24, 20) in [-1, 1]: a crop of the bundled coffee photo, area-downscaled x4."""
    from importlib.resources import files

    img = Image.open(str(files("tadsr") / "demo_photos" / "coffee.png")).convert("RGB")
    img = img.resize((img.width // 4, img.height // 4), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32)[LR_CROP] / 127.5 - 1
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None]


def upscale_values() -> dict[str, Tensor]:
    from tadsr.inference.pipeline import super_resolve
    from tadsr.model import load_model, resolve_model_path

    torch.set_num_threads(1)  # one thread: the same reduction order on every machine
    lr = fixed_lr()
    out = {}
    for name in ("student", "teacher"):
        model = load_model(resolve_model_path(name))
        out[f"upscale.{name}"] = super_resolve(model, lr, generator=torch.Generator().manual_seed(0))
    return out


def _photos(folder: Path) -> Path:
    y, x = np.mgrid[0:150, 0:170] / 100.0
    for i in range(3):
        img = np.stack([np.sin(7 * x + i), np.cos(9 * y - i), np.sin(5 * (x + y) + i)], axis=2) * 0.4 + 0.5
        img += np.random.default_rng(i).normal(0, 0.05, img.shape)
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def summary(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per floating tensor: (sum, sum of squares, the first 4 values) in float64: any changed weight shows."""
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        flat = value.detach().double().flatten()
        out[f"{prefix}.{key}"] = torch.cat([flat.sum()[None], flat.pow(2).sum()[None], flat[:4]])
    return out


def training_values() -> dict[str, Tensor]:
    from tadsr.training.config import apply_overrides, train_config
    from tadsr.training.distill import DistillTrainer
    from tadsr.training.teacher import TeacherTrainer

    torch.set_num_threads(1)
    common = ["data.gt_size=64", "run.batch_size=2", "run.steps=3", "run.save_every=3", "run.val_every=1000",
              "data.val_count=0", "data.crop=native", "data.gray_prob=0.5", "data.degradation=realesrgan-mild"]
    out: dict[str, Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "photos").mkdir()
        photos = _photos(work / "photos")
        base = [f"data.path={photos}", f"data.cache_dir={work / 'cache'}", *common]
        config = apply_overrides(train_config("tiny", "train-teacher"), [*base, "teacher.t_last_prob=0.25"])
        teacher = TeacherTrainer(config, work / "teacher", show_progress=False)
        final = teacher.run()
        out |= summary("teacher.model", teacher.network.state_dict())
        out |= summary("teacher.ema", teacher.ema.model.state_dict())
        # distill.hinge=mean: the hinge the values were recorded with (tadsr 0.1's; per-logit is the default now)
        config = apply_overrides(train_config("tiny", "distill"),
                                 [*base, "distill.teacher_cache=4", "distill.lambda_adv=0", "run.log_every=1",
                                  "distill.hinge=mean"])
        student = DistillTrainer(config, work / "student", teacher=final, show_progress=False)
        student.run()
        out |= summary("distill.student", student.network.state_dict())
        out |= summary("distill.ema", student.ema.model.state_dict())
        last = json.loads((work / "student" / "log.jsonl").read_text().splitlines()[-1])
        out["distill.d_loss_last"] = torch.tensor([last["step"], last["d_loss"]], dtype=torch.float64)
    return out


def compute() -> dict[str, Tensor]:
    return {k: v.float().contiguous() if k.startswith("upscale.") else v.contiguous()
            for k, v in (upscale_values() | training_values()).items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    values = compute()
    save_file(values, str(VALUES))
    print(f"wrote {len(values)} golden tensors to {VALUES}", file=sys.stderr)
