#!/usr/bin/env bash
# GPU smoke of distilling SeeSR at full size (TAD-SR Appendix B), with random weights, for a session that is lent one
# GPU: writes a random full-size SeeSR folder (benchmarks/seesr_random_folder.py, fp16 files), 4 random 640-px
# training images, then runs `tadsr distill --preset seesr` for 5 iterations at batch 1 (GT 512) for each
# family.trainable, the teacher cache of 2 pairs made by a 2-step guided sampler (so the cache, not the 50-step
# sampler, is what is timed). Per run it keeps log.jsonl (sec_per_it per iteration) and peak.json
# (torch.cuda.max_memory_allocated / max_memory_reserved of the whole run, cache building included). Each run has
# its own timeout, so one that runs out of memory or time leaves the others' results. Not run on the CPU-only
# machine that wrote it; the counted figures it checks are in docs/seesr-distill-cost.md.
# Usage: benchmarks/seesr_distill_gpu.sh [OUT_DIR]     (default $OUT, else /tmp/seesr-distill-gpu)
#   PYTHON: the interpreter; PER_RUN_TIMEOUT: seconds per distill run (default 150); TRAINABLE: the subsets
#   (default "image-attention lora full"); WORK: where the folder and images go (default /tmp/seesr-distill-work);
#   STEPS: iterations (default 5); DEVICE: cuda (default) or cpu, for a check of the script itself; EXTRA: more
#   overrides for every run (e.g. run.amp=bf16 on a CPU)
set -uo pipefail
OUT_DIR=${1:-${OUT:-/tmp/seesr-distill-gpu}}
PY=${PYTHON:-python}
PER_RUN=${PER_RUN_TIMEOUT:-150}
WORK=${WORK:-/tmp/seesr-distill-work}
export DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-5} EXTRA=${EXTRA:-}
mkdir -p "$OUT_DIR" "$WORK"
if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" \
        || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.csv" 2>/dev/null || true

if [ ! -f "$WORK/seesr/tadsr_seesr.json" ]; then
    rm -rf "$WORK/seesr"
    echo "== writing the random SeeSR folder"
    timeout 600 "$PY" benchmarks/seesr_random_folder.py "$WORK/seesr" 2>&1 | tee "$OUT_DIR/folder.log" || exit 1
fi
"$PY" - "$WORK/images" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
y, x = np.mgrid[0:640, 0:640] / 64.0
for i in range(4):  # smooth patterns plus noise: something for the degradation to blur
    base = np.stack([np.sin(x * (i + 1) + y), np.cos(y * (i + 2) - x), np.sin((x + y) * (i + 1))], axis=2)
    img = np.clip(0.5 + 0.35 * base + 0.1 * rng.standard_normal(base.shape), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(out / f"train{i}.png")
EOF

for trainable in ${TRAINABLE:-image-attention lora full}; do
    run="$OUT_DIR/$trainable"
    mkdir -p "$run"
    echo "== distill, family.trainable=$trainable"
    start=$(date +%s)
    # tadsr's CLI in-process, so that the CUDA peak of the whole run is read at exit
    timeout "$PER_RUN" "$PY" - "$run" "$WORK" "$trainable" <<'EOF' 2>&1 | grep -v -i warn | tee "$run/distill.log"
import atexit
import json
import os
import sys

import torch

from tadsr.cli import main

run, work, trainable = sys.argv[1:4]


@atexit.register
def peak() -> None:
    if torch.cuda.is_available():
        with open(f"{run}/peak.json", "w") as f:
            json.dump({"trainable": trainable, "max_memory_allocated_GiB": torch.cuda.max_memory_allocated() / 2**30,
                       "max_memory_reserved_GiB": torch.cuda.max_memory_reserved() / 2**30}, f)


sys.argv = ["tadsr", "distill", "--teacher", f"{work}/seesr", "--data", f"{work}/images",
            "--out", f"{work}/run-{trainable}", "--preset", "seesr", "--steps", os.environ["STEPS"],
            "--device", os.environ["DEVICE"], "-q", "run.batch_size=1", "run.val_every=1000",
            f"run.save_every={os.environ['STEPS']}", "run.log_every=1", "distill.teacher_cache=2",
            "family.teacher_steps=2", f"family.trainable={trainable}", *os.environ["EXTRA"].split()]
main()
EOF
    echo "== $trainable: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s"
    cp "$WORK/run-$trainable/log.jsonl" "$run/" 2>/dev/null || true
    rm -rf "$WORK/run-$trainable"  # its checkpoint and cache: gigabytes
    cat "$run/peak.json" 2>/dev/null; echo
done
"$PY" - "$OUT_DIR" <<'EOF'
import json
import statistics
import sys
from pathlib import Path

for run in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir()):
    log, peak = run / "log.jsonl", run / "peak.json"
    times = [json.loads(line)["sec_per_it"] for line in log.read_text().splitlines() if "sec_per_it" in line] \
        if log.is_file() else []
    mem = json.loads(peak.read_text()) if peak.is_file() else {}
    median = f"{statistics.median(times[1:]):.3f} s" if len(times) > 1 else "-"
    print(f"{run.name}: {len(times)} iterations, median after the first {median}, "
          f"peak allocated {mem.get('max_memory_allocated_GiB', float('nan')):.1f} GiB")
EOF
