"""Copy a trained teacher and student into the package as fp16 safetensors (src/tadsr/weights/).

Usage: python scripts/embedded/export.py TEACHER.safetensors STUDENT.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tadsr.model import load_model, save_model

WEIGHTS = Path(__file__).resolve().parents[2] / "src" / "tadsr" / "weights"


def main() -> None:
    teacher, student = (load_model(p) for p in sys.argv[1:3])
    if teacher.config.role != "teacher" or student.config.role != "student":
        sys.exit("give the teacher first, then the student")
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    for name, model in (("teacher", teacher), ("student", student)):
        save_model(model, WEIGHTS / f"{name}.safetensors", dtype=torch.float16)
    total = sum((WEIGHTS / f"{n}.safetensors").stat().st_size for n in ("teacher", "student"))
    print(f"wrote {WEIGHTS}/teacher.safetensors and student.safetensors ({total / 1e6:.1f} MB together)")


if __name__ == "__main__":
    main()
