#!/usr/bin/env bash
# The CPU runs behind README "Measured" (`tadsr bench`): latency and speed-up at 64->256, tiled 256->1024 and
# 1024->4096 (peak memory), batch 8, channels_last, and the memory at upscale's default tile. About 30 min on 2 cores.
# bf16/fp16 are left out on CPUs without native support (AVX2 only: emulated, many times slower than fp32).
# Usage: benchmarks/cpu_suite.sh [OUT_DIR]        (default docs/)
set -euo pipefail
OUT=${1:-docs}
tadsr bench --models embedded,realsr-x4 --sizes 64,256,1024 --repeats 5 --tile 64 --max-tiles 4 \
    --json "$OUT/bench-cpu.json"
# the embedded model's tiles are cheap: time 16 of them for a steadier estimate (the README's embedded tiled rows)
tadsr bench --models embedded --sizes 256,1024 --repeats 1 --tile 64 --max-tiles 16 \
    --json "$OUT/bench-cpu-embedded-tiled.json"
tadsr bench --models embedded --sizes 64 --batches 1,8 --repeats 2 --json "$OUT/bench-cpu-batch8.json"
tadsr bench --models embedded,realsr-x4 --sizes 64 --repeats 3 --channels-last --json "$OUT/bench-cpu-channels-last.json"
# the memory bound at `tadsr upscale`'s default tile (128): one timed tile of the 1024->4096 image
tadsr bench --models realsr-x4 --sizes 1024 --tile 128 --max-tiles 1 --repeats 1 --json "$OUT/bench-cpu-tile128.json"
