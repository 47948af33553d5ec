#!/usr/bin/env bash
# The training and evaluation benchmarks of the `base` shape (Florence-2-base sizes, random weights)
# on one GPU, then the window attention with and without --vision-sdpa, in one command (416 s on an
# H200 before the grouped training arm; not timed since); prints their JSON lines on stdout and
# appends them to bench/RESULTS.md. Our arms run in bf16 where the GPU has it (precision auto),
# the recipe baselines in fp32, as published.
#
#   bench/gpu.sh                                    # on a machine with a CUDA GPU
#   bench/gpu.sh --device cpu --shape small --steps 1 --warmup 1 --pairs 1 \
#       --questions 4 --fit-steps 2 --threads 1 --no-record   # dry run of the same entry point
#
# Options (defaults in brackets): --device [cuda] --shape [base] --steps [15] --warmup [3]
# --pairs [2] --batch-size [8] --questions [32, from the fitted pages] --fit-steps [per shape]
# --threads [torch's] --no-checkpointing (skip the --gradient-checkpointing memory run)
# --no-grouped (skip the `train --group-by-page` arm of each training pair)
# --no-record (print only; RESULTS.md untouched) --workdir DIR (kept, so that train_bench.py or
# eval_bench.py --workdir DIR can reuse it; default: a temporary one, removed). PYTHON picks the
# interpreter (default: .venv/bin/python when there is one, else python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

device=cuda shape=base steps=15 warmup=3 pairs=2 batch=8 questions=32 workdir=
train_extra=() eval_extra=() common_extra=()
while (($#)); do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --shape) shape=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --questions) questions=$2; shift 2 ;;
    --fit-steps) eval_extra+=(--fit-steps "$2"); shift 2 ;;
    --threads) common_extra+=(--threads "$2"); shift 2 ;;
    --no-checkpointing) train_extra+=(--no-checkpointing); shift ;;
    --no-grouped) train_extra+=(--no-grouped); shift ;;
    --no-record) common_extra+=(--no-record); shift ;;
    --workdir) workdir=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# One work directory for both benchmarks: the shape's checkpoint is built, fixed and its pages
# rendered once.
if [[ -z "$workdir" ]]; then
  workdir="$(mktemp -d "${TMPDIR:-/tmp}/fp-gpu-bench-XXXXXX")"
  trap 'rm -rf "$workdir"' EXIT
fi
started=$SECONDS

"$python" bench/train_bench.py --shape "$shape" --device "$device" --pairs "$pairs" --warmup "$warmup" \
  --steps "$steps" --batch-size "$batch" --workdir "$workdir" ${common_extra[@]+"${common_extra[@]}"} \
  ${train_extra[@]+"${train_extra[@]}"}
# Questions from the pages the model was fitted to, so that ANLS can be above zero.
"$python" bench/eval_bench.py --shape "$shape" --device "$device" --questions "$questions" --split train \
  --workdir "$workdir" \
  ${common_extra[@]+"${common_extra[@]}"} ${eval_extra[@]+"${eval_extra[@]}"}
# What --vision-sdpa does to the window attention alone, per stage (seconds; bf16 as train runs).
bf16=()
if [[ "$device" == cuda ]]; then bf16=(--bf16); fi
"$python" bench/window_attention.py --shape "$shape" --device "$device" --batch-size "$batch" --workdir "$workdir" \
  ${bf16[@]+"${bf16[@]}"} ${common_extra[@]+"${common_extra[@]}"}

echo "{\"what\": \"gpu.sh\", \"shape\": \"$shape\", \"device\": \"$device\", \"seconds\": $((SECONDS - started)), \"budget_s\": 480}"
