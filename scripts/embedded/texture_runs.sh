#!/usr/bin/env bash
# The student variants of the textured-split issue (docs/model-card.md, "Experiments on the textured split"), from
# the shipped teacher. Each variant is one resumable run folder; its EMA weights are kept at every 200 steps as
# WORK/<run>/<run>-s<STEP>.safetensors (the learning rate does not depend on the run's length, so a run resumed to a
# longer length continues the shorter one exactly). Evaluate them with evaluate.py --student.
# Usage: scripts/embedded/texture_runs.sh WORK_DIR [RUN ...]      (WORK_DIR as given to train.sh; RUN: a name below)
# The model card's textured-split table and docs/experiments/textured-frontier.png came from:
#   python scripts/embedded/evaluate.py WORK/data WORK --title "the shipped pair, fp16, and the students tried" \
#     --extra "tex 800 (paper)=WORK/tex-paper/tex-paper-s800.safetensors:1" \
#     --extra "adv 200=WORK/tex-adv/tex-adv-s200.safetensors:1" (and adv 400, adv 800 alike) \
#     --doc docs/embedded-metrics.md --sheet docs/experiments/textured-frontier.png
# and the discriminator probe of the model card from scripts/embedded/discriminator_probe.py WORK/tex-adv TEACHER.
set -euo pipefail
WORK=${1:?usage: texture_runs.sh WORK_DIR [RUN ...]}
shift
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
source "$HERE/recipe.sh"
TEACHER=${TEACHER:-$ROOT/src/tadsr/weights/teacher.safetensors}
TEX=(data.texture_ref=8)  # texture-aware crops (tadsr.data.photos)

student() {  # student NAME "STEP STEP ..." OVERRIDES...: a run, kept at each step
    local name=$1 steps=$2
    shift 2
    local run="$WORK/$name"
    mkdir -p "$run"
    if [ ! -f "$run/teacher_cache.pt" ] && [ -f "$WORK/tex-paper/teacher_cache.pt" ] && [ "$name" != tex-paper ]; then
        cp "$WORK/tex-paper/teacher_cache.pt" "$run/"  # the same pairs and teacher targets (the key checks them)
    fi
    for step in $steps; do
        [ -f "$run/$name-s$step.safetensors" ] && continue
        resume=()
        [ -d "$run/checkpoints" ] && resume=(--resume)
        tadsr distill --preset tiny --teacher "$TEACHER" --data "$WORK/data/train.txt" --out "$run" --steps "$step" \
            "${resume[@]}" "${DISTILL_ARGS[@]}" run.keep_last=2 run.val_every=100000 "$@"
        cp "$run/final.safetensors" "$run/$name-s$step.safetensors"
    done
}

teacher_ft() {  # the shipped teacher, trained on: tadsr train-teacher --init, resumable at every 200 steps
    local run="$WORK/teacher-ft" resume=()
    [ -f "$run/final.safetensors" ] && return
    [ -d "$run/checkpoints" ] && resume=(--resume)
    tadsr train-teacher --init "$ROOT/src/tadsr/weights/teacher.safetensors" --data "$WORK/data/train.txt" \
        --out "$run" --steps 2400 "${resume[@]}" "${TEACHER_ARGS[@]}" optim.lr=7.5e-5 optim.warmup=0 \
        optim.milestones=[] run.val_every=100000 run.seed=1  # new crops, not the first run's again
}

run_variant() {
    case $1 in
        tex-paper) student tex-paper "200 400 600 800 1000" "${TEX[@]}" ;;  # the data lever alone: the paper's lambdas
        # the discriminator at the small t where real and fake latents differ by more than the noise (model card)
        tex-adv) student tex-adv "200 400 600 800" "${TEX[@]}" distill.lambda_adv=0.1 optim.lr_d=1e-3 distill.dis_t_max=3 ;;
        # HSD against the ground truth's latent instead of the teacher's sample (distill.score_target=gt): its
        # direction is zero at the GT, so it pulls against the grain the student copies from the teacher
        tex-hsdgt) student tex-hsdgt "200 400 800" "${TEX[@]}" distill.score_target=gt ;;
        tex-hsdgt4) student tex-hsdgt4 "200 400 800" "${TEX[@]}" distill.score_target=gt distill.lambda_score=4 ;;
        # the teacher lever: the shipped teacher fine-tuned 2400 more steps at its last learning rate (3e-4 halved
        # twice), then the shipped student recipe distilled from it
        teacher-ft) teacher_ft ;;
        student-ft) TEACHER=$WORK/teacher-ft/final.safetensors student student-ft "200 400" ;;
        *) echo "unknown run $1" >&2; exit 2 ;;
    esac
}

for name in "${@:-tex-paper tex-adv}"; do
    for variant in $name; do run_variant "$variant"; done
done
