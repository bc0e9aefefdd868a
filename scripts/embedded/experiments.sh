#!/usr/bin/env bash
# The levers tried on the embedded pair beyond scripts/embedded/train.sh (docs/model-card.md, "What else we tried"):
# a bigger teacher within the 25 MB budget, a longer student (resumed in pieces), and heavier HSD / adversarial
# weights. Each is measured on the validation tiles that evaluate.py builds (WORK/valset).
# Usage: scripts/embedded/experiments.sh WORK_DIR     (WORK_DIR as given to train.sh, after it; about 2 h on 2 cores)
set -euo pipefail
WORK=${1:?usage: experiments.sh WORK_DIR}
TEACHER="$WORK/teacher/final.safetensors"
measure() {  # measure NAME MODEL:STEPS...
    local name=$1; shift
    tadsr evaluate --lr "$WORK/valset/lq" --gt "$WORK/valset/gt" --models "$(IFS=,; echo "$*")" \
        --metrics psnr,ssim,niqe --y-channel -o "$WORK/experiments/$name" -q
}
source "$(cd "$(dirname "$0")" && pwd)/recipe.sh"

# 1. a bigger teacher: channel multipliers (1, 3) instead of (1, 2) (5.8 M parameters, 11.5 MB in fp16), same recipe
tadsr train-teacher --preset tiny --data "$WORK/data/train" --out "$WORK/teacher-wide" --steps 2400 \
    "${TEACHER_ARGS[@]}" model.unet.channel_mult=[1,3]
measure teacher-wide "$TEACHER:1" "$TEACHER:15" "$WORK/teacher-wide/final.safetensors:1" \
    "$WORK/teacher-wide/final.safetensors:15"

# 2. a longer student: train.sh's 800-step run resumed to 1200, 1600, 2000 and 2400 steps
[ -d "$WORK/student-long" ] || cp -r "$WORK/student" "$WORK/student-long"
for steps in 1200 1600 2000 2400; do
    tadsr distill --preset tiny --teacher "$TEACHER" --data "$WORK/data/train" --out "$WORK/student-long" \
        --steps "$steps" --resume "${DISTILL_ARGS[@]}"
    cp "$WORK/student-long/final.safetensors" "$WORK/student-long-$steps.safetensors"
done
measure student-long "$WORK"/student-long-{1200,1600,2000,2400}.safetensors:1

# 3. heavier loss weights, 800 steps each from the same teacher cache (train.sh: lambda_hsd 1, lambda_adv 0.02)
for exp in "adv01 distill.lambda_adv=0.1" "hsd2 distill.lambda_hsd=2.0"; do
    read -r name override <<< "$exp"
    mkdir -p "$WORK/student-$name" && cp "$WORK/student/teacher_cache.pt" "$WORK/student-$name/"
    tadsr distill --preset tiny --teacher "$TEACHER" --data "$WORK/data/train" --out "$WORK/student-$name" \
        --steps 800 "${DISTILL_ARGS[@]}" "$override"
done
measure loss-weights "$WORK/student/final.safetensors:1" "$WORK"/student-{adv01,hsd2}/final.safetensors:1
