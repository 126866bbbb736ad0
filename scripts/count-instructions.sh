#!/usr/bin/env bash
# Instructions the engine executes per 4 KiB transfer in prepare + post + wait +
# release, counted by callgrind (repeatable where times are not): one run per call,
# because valgrind 3.19 honours only the first --toggle-collect of a command line.
#
#   scripts/count-instructions.sh [BENCH_BINARY]   (default: target/release/ringxfer-bench)
#
# Prints, for the file and local backends, the total per transfer and each call's part.
set -euo pipefail
bin="${1:-target/release/ringxfer-bench}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for backend in file local; do
  extra=()
  [ "$backend" = file ] && extra=(--path "$scratch")
  sum=0
  parts=""
  for call in prepare post wait release; do
    out="$(valgrind --tool=callgrind --callgrind-out-file="$scratch/cg.out" --collect-atstart=no \
      --toggle-collect="*Engine*::$call" "$bin" --backend "$backend" "${extra[@]}" --op read \
      --start-block-size 4K --max-block-size 4K --rounds 1 --num-iter 5000 --warmup-iter 0 2>&1)"
    n="$(grep -o 'Collected : [0-9]*' <<<"$out" | awk '{print $3}')"
    # Two engine rounds of 5,000 transfers: the timed one and the sampled one.
    parts="$parts $call=$((n / 10000))"
    sum=$((sum + n))
  done
  echo "$backend: $((sum / 10000)) instructions per transfer ($parts )"
done
