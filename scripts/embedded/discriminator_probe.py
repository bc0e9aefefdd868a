"""Can the time-aware discriminator tell real latents from fake ones at all? D trained alone, nothing else moves.

Takes a distillation run folder (its config.json and teacher_cache.pt, e.g. one of texture_runs.sh), builds the
same DistillTrainer, and runs only the discriminator's hinge step (Eq. 12) on real = the GT latent and fake = the
teacher's 15-step output (``--fake teacher``, what the student imitates) or the bicubic latent z_y (``--fake
bicubic``, an easy case), both noised at t < ``--t-max`` with shared noise, as distillation does. Prints D's accuracy
(the share of samples on the right side of 0) and its margin mean D(real) - mean D(fake), averaged per 50 steps.
A discriminator that cannot separate these cannot give the student a signal beyond its teacher.

Usage: python scripts/embedded/discriminator_probe.py RUN_DIR TEACHER [--fake teacher|bicubic] [--lr-d 1e-3]
       [--t-max 3] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from tadsr.training.config import apply_overrides, config_from_dict
from tadsr.training.distill import DistillTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("--fake", choices=["teacher", "bicubic"], default="teacher")
    parser.add_argument("--lr-d", type=float, default=1e-3)
    parser.add_argument("--t-max", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    config = config_from_dict(json.loads((args.run / "config.json").read_text()))
    config = apply_overrides(config, [f"optim.lr_d={args.lr_d}", f"distill.dis_t_max={args.t_max}"])
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(args.run / "teacher_cache.pt", Path(tmp) / "teacher_cache.pt")
        trainer = DistillTrainer(config, Path(tmp), teacher=args.teacher, show_progress=False)
        batches = iter(trainer.batches())
        sums = {"d_acc": 0.0, "d_pair_acc": 0.0, "d_gap": 0.0}
        for step in range(1, args.steps + 1):
            pair = trainer.pair(next(batches))
            terms, _, _ = trainer.discriminator_step(pair, pair.z_tch if args.fake == "teacher" else pair.cond.z_y)
            sums = {k: v + float(terms[k]) for k, v in sums.items()}
            if step % 50 == 0:
                print(f"step {step}: accuracy {sums['d_acc'] / 50:.3f}, pair accuracy {sums['d_pair_acc'] / 50:.3f}, "
                      f"margin {sums['d_gap'] / 50:+.4f}", flush=True)
                sums = dict.fromkeys(sums, 0.0)


if __name__ == "__main__":
    main()
