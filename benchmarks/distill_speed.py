"""Seconds per distillation iteration with and without the teacher-output cache (tiny preset, this machine).

The T-step teacher target costs T teacher calls per sample per iteration; the cache pays them once for a fixed set
of degraded pairs. Prints both rates, the one-off cache build time and the speed-up.

Usage: python benchmarks/distill_speed.py --data PHOTOS [--steps 20] [--cache 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from tadsr.model import SRModel, save_model
from tadsr.presets import tiny_model_config
from tadsr.training.config import apply_overrides, train_config
from tadsr.training.distill import DistillTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cache", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher.safetensors"
        torch.manual_seed(0)
        save_model(SRModel(tiny_model_config()), teacher)
        rates = {}
        for label, cache in (("on the fly", 0), ("teacher cache", args.cache)):
            config = apply_overrides(train_config("tiny"), [
                f"data.path={args.data}", f"run.steps={args.steps}", "run.log_every=1", "run.val_every=100000",
                "run.save_every=100000", f"distill.teacher_cache={cache}"])
            run_dir = Path(tmp) / label.replace(" ", "_")
            trainer = DistillTrainer(config, run_dir, teacher=teacher, show_progress=False)
            start = time.perf_counter()
            trainer.run()
            total = time.perf_counter() - start
            log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
            per_it = [r["sec_per_it"] for r in log if "sec_per_it" in r][2:]  # skip warm-up iterations
            rates[label] = sum(per_it) / len(per_it)
            print(f"{label:>14}: {rates[label]:.3f} s/it (run total {total:.1f} s for {args.steps} steps)")
        print(f"speed-up {rates['on the fly'] / rates['teacher cache']:.2f}x per iteration "
              f"(tiny preset, batch 4, T=15, {torch.get_num_threads()} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
