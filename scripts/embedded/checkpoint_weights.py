"""Write a distillation checkpoint's raw and EMA students as two model files, to measure them side by side.

A run's ``final.safetensors`` is its EMA student (``run.raw_weights=true`` also writes ``final-raw.safetensors``);
every checkpoint holds both, so that any saved step can be read either way. Only the ResShift family (a tadsr
teacher file): the student shares the teacher's first stage.

Usage: python scripts/embedded/checkpoint_weights.py RUN_DIR/checkpoints/step_00000200.pt TEACHER OUT_DIR
writes OUT_DIR/raw-STEP.safetensors and OUT_DIR/ema-STEP.safetensors.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from tadsr.model import SRModel, load_model, save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    teacher = load_model(args.teacher)
    config = dataclasses.replace(teacher.config, role="student")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, key in (("raw", "student"), ("ema", "ema")):
        model = SRModel(config, first_stage=teacher.first_stage)
        model.unet.load_state_dict(checkpoint[key])
        path = args.out / f"{name}-{int(checkpoint['step'])}.safetensors"
        save_model(model.eval(), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
