#!/usr/bin/env bash
# Reproduces the embedded teacher and student (src/tadsr/weights/) on a CPU, from the two Debian photo packages.
# Usage: scripts/embedded/train.sh WORK_DIR      (about 1.2 h on 2 cores; every step resumable with --resume)
set -euo pipefail
WORK=${1:?usage: train.sh WORK_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
python "$HERE/prepare_data.py" "$WORK/data"

# 1. the teacher: the tiny preset (Swin-UNet, 64 channels, pixel-unshuffle f4, residual x0, T=15, kappa 2), x4
#    Real-ESRGAN pairs at GT 128
tadsr train-teacher --preset tiny --data "$WORK/data/train" --out "$WORK/teacher" --steps 2400 \
    data.gt_size=128 data.val_path="$WORK/data/val" data.val_count=3 run.batch_size=8 data.workers=1 \
    optim.lr=3e-4 optim.warmup=100 optim.ema_rate=0.995 run.save_every=200 run.val_every=400 run.log_every=20 -q

# 2. the student: TAD-SR distillation (L_distill + HSD + time-aware adversarial), from a teacher cache of 512 pairs
#    at GT 64 (a quarter of the teacher's crop area: the CPU budget)
tadsr distill --preset tiny --teacher "$WORK/teacher/final.safetensors" --data "$WORK/data/train" \
    --out "$WORK/student" --steps 800 data.gt_size=64 data.val_path="$WORK/data/val" data.val_count=3 \
    run.batch_size=8 data.workers=1 distill.teacher_cache=512 optim.lr=1e-4 optim.lr_d=1e-4 optim.warmup=50 \
    optim.ema_rate=0.995 run.save_every=200 run.val_every=400 run.log_every=10 -q

# 3. ship them in fp16, then measure them (docs/embedded-metrics.md) and run the ablation (docs/ablation.md)
python "$HERE/export.py" "$WORK/teacher/final.safetensors" "$WORK/student/final.safetensors"
python "$HERE/evaluate.py" "$WORK/data" "$WORK"
python "$HERE/ablation.py" "$WORK/data" "$WORK" "$WORK/teacher/final.safetensors" --steps 150
