#!/usr/bin/env bash
# The CPU runs behind README "Measured" (`tadsr bench`): latency and speed-up at 64->256, tiled 256->1024 and
# 1024->4096 (peak memory), batch 8 and bf16/fp16 for the embedded model, channels_last. About 25 min on 2 cores.
# Usage: benchmarks/cpu_suite.sh [OUT_DIR]        (default docs/)
set -euo pipefail
OUT=${1:-docs}
tadsr bench --models embedded,realsr-x4 --sizes 64,256,1024 --repeats 5 --tile 64 --max-tiles 4 \
    --json "$OUT/bench-cpu.json"
tadsr bench --models embedded --sizes 64 --batches 1,8 --dtypes fp32,bf16,fp16 --repeats 2 \
    --json "$OUT/bench-cpu-dtypes.json"
tadsr bench --models embedded,realsr-x4 --sizes 64 --repeats 3 --channels-last --json "$OUT/bench-cpu-channels-last.json"
# the memory bound at `tadsr upscale`'s default tile (128): one timed tile of the 1024->4096 image
tadsr bench --models realsr-x4 --sizes 1024 --tile 128 --max-tiles 1 --repeats 1 --json "$OUT/bench-cpu-tile128.json"
