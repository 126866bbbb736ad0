#!/usr/bin/env bash
# Every GPU test and GPU bench of ringxfer, from prebuilt binaries, in under 5 minutes
# on a one-GPU machine (no Rust toolchain needed), then a short table.
#
# Build the bundle here, then carry it to the GPU machine:
#   ../shared/tools/device-bundle.sh gpu        # .device/: ringxfer-bench, test-gpu, this script
#   bash .device/gpu-check.sh                   # on the GPU machine
#
# Tests run with RINGXFER_REQUIRE_GPU=1: no GPU is a failure, not a skip.
set -uo pipefail
cd "$(dirname "$0")"
bench=./ringxfer-bench
[ -x "$bench" ] || bench=../target/release/ringxfer-bench
results=()
row() { results+=("$(printf '%-44s %s' "$1" "$2")"); }

nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found"

for t in ./test-gpu ../target/release/deps/gpu-*; do
  [ -x "$t" ] || continue
  if out=$(RINGXFER_REQUIRE_GPU=1 timeout 150 "$t" --test-threads=1 2>&1); then
    row "tests/gpu.rs ($(grep -o '[0-9]* passed' <<<"$out" | head -1))" ok
  else
    row "tests/gpu.rs" FAILED
    tail -n 30 <<<"$out"
  fi
  break
done

# One line of the bench's table for a case: "<GB/s> <ratio>" of its last row.
case_row() {
  timeout 60 "$bench" --backend cuda "$@" --num-iter 2000 --warmup-iter 200 --rounds 3 2>&1 |
    tr '\r' '\n' | awk '$1 ~ /^[0-9]+[KMG]$/ && $NF ~ /x$/ {gbs = $4; ratio = $NF}
      END {print gbs " GB/s, " ratio " of the raw loop"}'
}
row "cuda host->GPU 64 MiB, window 16" "$(case_row --start-block-size 64M --max-block-size 64M)"
row "cuda GPU->host 64 MiB, window 16" "$(case_row --op read --start-block-size 64M --max-block-size 64M)"
row "cuda GPU->GPU 64 MiB, window 16" "$(case_row --initiator-seg vram --start-block-size 64M --max-block-size 64M)"
row "cuda host->GPU 4 KiB, window 16" "$(case_row --start-block-size 4K --max-block-size 4K)"
row "cuda host->GPU 64 x 4 KiB (merged: one run)" "$(case_row --start-block-size 4K --max-block-size 4K --start-batch-size 64 --max-batch-size 64)"
# KV-shaped transfers (--kv LAYERS,BLOCKS,SIZE: LAYERS x 2 x BLOCKS pages at random
# block ids on both sides), against the per-copy raw loop and the batch API without
# the engine, in the same run.
kv_row() {
  timeout 90 "$bench" --backend cuda "$@" --num-iter 400 --warmup-iter 20 --rounds 3 2>&1 |
    awk '/per page/ {gbs = $2; prep = $3; r1 = $NF} /batch API/ {r2 = $NF}
      END {print gbs " GB/s, prepare " prep " us, " r1 " of per-copy, " r2 " of batch API"}'
}
row "cuda host->GPU 64 x 4 KiB scattered" "$(kv_row --kv 1,32,4K)"
row "cuda host->GPU 64 x 64 KiB scattered" "$(kv_row --kv 1,32,64K)"
row "cuda host->GPU --kv 32,256,16K random" "$(kv_row --kv 32,256,16K)"
row "cuda GPU->host --kv 32,256,16K random" "$(kv_row --kv 32,256,16K --op read)"
row "cuda host->GPU --kv 32,256,16K, batch off" "$(kv_row --kv 32,256,16K --cuda-no-batch)"
# Two processes (CUDA IPC): the target engine in a child process, against a raw loop
# into memory the child exported and this process opened with cuIpcOpenMemHandle.
ipc="--two-process --initiator-seg vram --target-seg vram"
row "IPC GPU->peer GPU 64 MiB, window 16" "$(case_row $ipc --start-block-size 64M --max-block-size 64M)"
row "IPC GPU->peer GPU 4 KiB, window 16" "$(case_row $ipc --start-block-size 4K --max-block-size 4K)"
row "IPC GPU->peer GPU 4 KiB, window 1" "$(case_row $ipc --start-block-size 4K --max-block-size 4K --window 1)"
row "IPC peer GPU->GPU 64 MiB (read)" "$(case_row $ipc --op read --start-block-size 64M --max-block-size 64M)"
row "IPC (VMM fd) GPU->peer GPU 64 MiB" "$(case_row $ipc --cuda-vmm --start-block-size 64M --max-block-size 64M)"
row "IPC host->peer GPU 1 MiB, window 16" "$(case_row --two-process --target-seg vram --start-block-size 1M --max-block-size 1M)"

echo
echo "ringxfer GPU check"
printf '%s\n' "${results[@]}"
