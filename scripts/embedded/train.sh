#!/usr/bin/env bash
# Reproduces the embedded teacher and student (src/tadsr/weights/) on a CPU, from the photos prepare_data.py names.
# Usage: scripts/embedded/train.sh WORK_DIR      (about 2.5 h on 2 cores; every step resumable with --resume)
set -euo pipefail
WORK=${1:?usage: train.sh WORK_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
python "$HERE/prepare_data.py" "$WORK/data"

source "$HERE/recipe.sh"

# 1. the teacher (settings: recipe.sh)
tadsr train-teacher --preset tiny --data "$WORK/data/train.txt" --out "$WORK/teacher" --steps 5000 "${TEACHER_ARGS[@]}"

# 2. the student, distilled from it (settings: recipe.sh)
tadsr distill --preset tiny --teacher "$WORK/teacher/final.safetensors" --data "$WORK/data/train.txt" \
    --out "$WORK/student" --steps "$STUDENT_STEPS" "${DISTILL_ARGS[@]}"

# 3. ship them in fp16, then measure them (docs/embedded-metrics.md, the sheet), diagnose the teacher
#    (docs/embedded-diagnostic.md) and run the ablation (docs/ablation.md)
python "$HERE/export.py" "$WORK/teacher/final.safetensors" "$WORK/student/final.safetensors"
python "$HERE/evaluate.py" "$WORK/data" "$WORK" --doc "$ROOT/docs/embedded-metrics.md" \
    --sheet "$ROOT/docs/experiments/shipped-textured.png"
python "$HERE/evaluate.py" "$WORK/data" "$WORK" --split grid --sheet "$ROOT/docs/experiments/shipped.png"
python "$HERE/diagnose.py" "$ROOT/src/tadsr/weights/teacher.safetensors" "$WORK/data" "$WORK" \
    --doc "$ROOT/docs/embedded-diagnostic.md" --title "the shipped teacher"
python "$HERE/ablation.py" "$WORK/data" "$WORK" "$WORK/teacher/final.safetensors" --steps 800
