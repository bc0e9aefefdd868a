"""Write a distillation checkpoint's raw and EMA students as two model files, to measure them side by side.

A run's ``final.safetensors`` is its EMA student (``run.raw_weights=true`` also writes ``final-raw.safetensors``);
every checkpoint holds both, so that any saved step can be read either way. The files are written by the run's
teacher family (``tadsr.training.families``: ``DistillTeacher.save_student``), as the run writes its own.

Usage: python scripts/embedded/checkpoint_weights.py RUN_DIR/checkpoints/step_00000200.pt TEACHER OUT_DIR
writes OUT_DIR/raw-STEP.safetensors and OUT_DIR/ema-STEP.safetensors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tadsr.training.config import config_from_dict
from tadsr.training.families import open_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    family = config_from_dict(json.loads(checkpoint["config"]), warn_renamed=False).family
    teacher = open_teacher(args.teacher, family, torch.device("cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, key in (("raw", "student"), ("ema", "ema")):
        student = teacher.make_student().eval()
        student.load_state_dict(checkpoint[key])
        path = args.out / f"{name}-{int(checkpoint['step'])}.safetensors"
        teacher.save_student(path, student)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
