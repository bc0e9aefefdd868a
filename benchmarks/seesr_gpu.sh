#!/usr/bin/env bash
# GPU smoke of TAD-SeeSR at full size with random weights (benchmarks/seesr_speed.py, tadsr's modules), for a session
# that is lent a GPU: one step 128 -> 512 and 512 -> 2048, component by component, fp16 and bf16 (plus fp32 at 128).
# The 512 -> 2048 run is untiled (the components on the 2048² image, a 256² latent), not through tadsr's tiled
# Upscaler: it bounds what one tile-free step costs. Each run has its own timeout, so one that runs out of memory or
# time leaves the others' JSON in place. Not run on the CPU-only machine that wrote it.
# Usage: benchmarks/seesr_gpu.sh [OUT_DIR]      (default $OUT, else /tmp/seesr-gpu); PYTHON overrides the interpreter
set -uo pipefail
OUT_DIR=${1:-${OUT:-/tmp/seesr-gpu}}
PY=${PYTHON:-python}
PER_RUN=${PER_RUN_TIMEOUT:-150}
mkdir -p "$OUT_DIR"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" \
    || exit 1
run() {  # run NAME ARGS...
    local name=$1; shift
    echo "== $name: seesr_speed.py --device cuda $*"
    timeout "$PER_RUN" "$PY" benchmarks/seesr_speed.py --device cuda --warmup 1 --repeats 3 \
        --json "$OUT_DIR/$name.json" "$@" 2>&1 | grep -v -i warn | tee "$OUT_DIR/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}
run lr128-fp16 --lr 128 --dtypes fp16
run lr128-bf16 --lr 128 --dtypes bf16
run lr128-fp32 --lr 128 --dtypes fp32
run lr512-fp16 --lr 512 --dtypes fp16
run lr512-bf16 --lr 512 --dtypes bf16
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.csv" 2>/dev/null || true
