#!/usr/bin/env bash
# What the model card's "Experiments" table measured besides train.sh, on the validation split that evaluate.py
# builds (run train.sh first; WORK_DIR as given to it). Comparison sheets go to docs/experiments/.
# Usage: scripts/embedded/experiments.sh WORK_DIR
set -euo pipefail
WORK=${1:?usage: experiments.sh WORK_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
source "$HERE/recipe.sh"
measure() {  # measure OUT MODEL:STEPS -- on the colour and the gray validation crops (grid split)
    tadsr evaluate --lr "$WORK/valset/lq" --gt "$WORK/valset/gt" --models "$2" --metrics psnr,ssim,chroma,detail,niqe \
        --y-channel -o "$1-valset" -q > /dev/null
    tadsr evaluate --lr "$WORK/valset-gray/lq" --gt "$WORK/valset-gray/gt" --models "$2" --metrics gray \
        -o "$1-valset-gray" -q > /dev/null
}

# 1. before: the previous embedded student (thumbnail data, heavy realesrgan degradation) from git history, and the
#    previous teacher's per-timestep diagnostic (docs/experiments/previous-teacher-diagnostic.md)
mkdir -p "$WORK/previous"
for name in teacher student; do
    git -C "$ROOT" show "7c4f80e:src/tadsr/weights/$name.safetensors" > "$WORK/previous/$name.safetensors"
done
measure "$WORK/previous/report" "$WORK/previous/student.safetensors:1"
python "$HERE/diagnose.py" "$WORK/previous/teacher.safetensors" "$WORK/data" "$WORK" \
    --doc "$ROOT/docs/experiments/previous-teacher-diagnostic.md" --title "the previous teacher"

# 2. the student's HSD weight doubled (lambda_hsd 2), 800 steps. Run (session 4) from the 3000-step teacher, the
#    then shipped one (git show ddd0ad3:src/tadsr/weights/teacher.safetensors); from train.sh's 5000-step teacher
#    the figures will differ.
mkdir -p "$WORK/student-hsd2"
tadsr distill --preset tiny --teacher "$WORK/teacher/final.safetensors" --data "$WORK/data/train.txt" \
    --out "$WORK/student-hsd2" --steps 800 "${DISTILL_ARGS[@]}" distill.lambda_score=2.0
measure "$WORK/student-hsd2/report" "$WORK/student-hsd2/final.safetensors:1"
measure "$WORK/student/report" "$WORK/student/final.safetensors:1"

# 3. the figures of each run (the model card's table) and the before/after sheet
cd "$HERE" && python - "$WORK" "$ROOT" <<'PY'
import json, sys
from pathlib import Path
from evaluate import output_folder, split_sheet
work, root = Path(sys.argv[1]), Path(sys.argv[2])
runs = {"previous student": work / "previous/report", "student": work / "student/report",
        "student, lambda_hsd 2": work / "student-hsd2/report"}
for name, report in runs.items():
    (label, f), = json.loads(Path(f"{report}-valset/report.json").read_text()).items()
    gray = json.loads(Path(f"{report}-valset-gray/report.json").read_text())[label]["gray"]
    print(f"| {name} | {f['psnr']:.2f} | {f['chroma']:.2f} | {gray:.2f} | {f['detail']:.3f} | {f['niqe']:.2f} |")
split_sheet({"bicubic": output_folder(work / "valset-baselines", "bicubic"),
                  "previous": output_folder(work / "previous/report-valset", "student:1"),
                  "student": output_folder(work / "student/report-valset", "final:1")}, work / "valset/gt",
                 root / "docs/experiments/previous-vs-new-student.png")
PY

# 4. (session 5) the student from the 5000-step teacher at 400 steps, next to the shipped 200-step one (train.sh)
#    and the previous shipped student (3000-step teacher): docs/experiments/teacher-3000-vs-5000-students.png
tadsr distill --preset tiny --teacher "$WORK/teacher/final.safetensors" --data "$WORK/data/train.txt" \
    --out "$WORK/student-400" --steps 400 "${DISTILL_ARGS[@]}"
measure "$WORK/student-400/report" "$WORK/student-400/final.safetensors:1"

# 5. (session 7) the textured split: texture-aware crops and the student's length (texture_runs.sh: tex-paper, the
#    shipped recipe; tex-adv, the discriminator at t < 3 with a 10x learning rate and 5x weight), measured beside
#    the previous student, and the per-loss ablation (docs/ablation.md)
"$HERE/texture_runs.sh" "$WORK"
git -C "$ROOT" show "b9c56f0:src/tadsr/weights/student.safetensors" > "$WORK/previous/student-200.safetensors"
extras=(--extra "previous student=$WORK/previous/student-200.safetensors:1")
for step in 200 400 600 800 1000; do
    extras+=(--extra "tex-paper $step=$WORK/tex-paper/tex-paper-s$step.safetensors:1")
done
extras+=(--extra "tex-adv 400=$WORK/tex-adv/tex-adv-s400.safetensors:1")
extras+=(--extra "tex-adv 800=$WORK/tex-adv/tex-adv-s800.safetensors:1")
python "$HERE/evaluate.py" "$WORK/data" "$WORK" "${extras[@]}"  # the frontier table of the model card
python "$HERE/evaluate.py" "$WORK/data" "$WORK" --reuse-baselines --sheet "$ROOT/docs/experiments/texture-runs.png" \
    --extra "previous student=$WORK/previous/student-200.safetensors:1" \
    --extra "tex-paper 400=$WORK/tex-paper/tex-paper-s400.safetensors:1" \
    --extra "tex-adv 800=$WORK/tex-adv/tex-adv-s800.safetensors:1"
python "$HERE/ablation.py" "$WORK/data" "$WORK" "$ROOT/src/tadsr/weights/teacher.safetensors" --steps 800
