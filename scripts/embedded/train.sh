#!/usr/bin/env bash
# Reproduces the embedded teacher and student (src/tadsr/weights/) on a CPU, from the two Debian photo packages.
# Usage: scripts/embedded/train.sh WORK_DIR      (about 1.2 h on 2 cores; every step resumable with --resume)
set -euo pipefail
WORK=${1:?usage: train.sh WORK_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
python "$HERE/prepare_data.py" "$WORK/data"

source "$HERE/recipe.sh"

# 1. the teacher (settings: recipe.sh)
tadsr train-teacher --preset tiny --data "$WORK/data/train" --out "$WORK/teacher" --steps 2400 "${TEACHER_ARGS[@]}"

# 2. the student, distilled from it (settings: recipe.sh)
tadsr distill --preset tiny --teacher "$WORK/teacher/final.safetensors" --data "$WORK/data/train" \
    --out "$WORK/student" --steps 800 "${DISTILL_ARGS[@]}"

# 3. ship them in fp16, then measure them (docs/embedded-metrics.md) and run the ablation (docs/ablation.md)
python "$HERE/export.py" "$WORK/teacher/final.safetensors" "$WORK/student/final.safetensors"
python "$HERE/evaluate.py" "$WORK/data" "$WORK"
python "$HERE/ablation.py" "$WORK/data" "$WORK" "$WORK/teacher/final.safetensors" --steps 150
