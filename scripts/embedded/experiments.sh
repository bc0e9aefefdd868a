#!/usr/bin/env bash
# What the model card's "Experiments" table measured besides train.sh, on the validation split that evaluate.py
# builds (run train.sh first; WORK_DIR as given to it). Comparison sheets go to docs/experiments/.
# Usage: scripts/embedded/experiments.sh WORK_DIR
set -euo pipefail
WORK=${1:?usage: experiments.sh WORK_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
source "$HERE/recipe.sh"
measure() {  # measure OUT MODEL:STEPS -- on the colour and the gray validation crops
    for set in valset valset-gray; do
        tadsr evaluate --lr "$WORK/$set/lq" --gt "$WORK/$set/gt" --models "$2" --metrics psnr,ssim,niqe \
            --y-channel -o "$1-$set" -q > /dev/null
    done
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
import csv, sys
from pathlib import Path
import numpy as np
from evaluate import comparison_sheet, detail_figures
work, root = Path(sys.argv[1]), Path(sys.argv[2])
runs = {"previous student": work / "previous/report", "student": work / "student/report",
        "student, lambda_hsd 2": work / "student-hsd2/report"}
for name, report in runs.items():
    colour, gray = Path(f"{report}-valset"), Path(f"{report}-valset-gray")
    rows = list(csv.DictReader(open(colour / "per_image.csv")))
    label = rows[0]["model"]
    mean = {k: np.mean([float(r[k]) for r in rows]) for k in ("psnr", "niqe")}
    fig = detail_figures(colour, work / "valset/gt", label)
    fig["gray"] = detail_figures(gray, work / "valset-gray/gt", label)["gray"]
    print(f"| {name} | {mean['psnr']:.2f} | {fig['chroma']:.2f} | {fig['gray']:.2f} | {fig['detail']:.3f} | "
          f"{mean['niqe']:.2f} |")
comparison_sheet({"bicubic": work / "val-baselines", "student:1": work / "previous/report-valset",
                  "final:1": work / "student/report-valset"}, work / "valset",
                 root / "docs/experiments/previous-vs-new-student.png")
PY

# 4. (session 5) the student from the 5000-step teacher at 400 steps, next to the shipped 200-step one (train.sh)
#    and the previous shipped student (3000-step teacher): docs/experiments/teacher-3000-vs-5000-students.png
tadsr distill --preset tiny --teacher "$WORK/teacher/final.safetensors" --data "$WORK/data/train.txt" \
    --out "$WORK/student-400" --steps 400 "${DISTILL_ARGS[@]}"
measure "$WORK/student-400/report" "$WORK/student-400/final.safetensors:1"
