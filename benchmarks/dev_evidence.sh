#!/usr/bin/env bash
# Single against untrained latent_mas (greedy, Qwen2.5-Coder-0.5B-Instruct, the defaults of
# benchmarks/gsm8k_methods.py) on the last 50 problems of each development set in DIFFMAS_DATA_DIR;
# one results folder per task, benchmarks/results/TASK-last50-qwen0.5b. Run it alone (other heavy
# processes skew the timings).
#   DIFFMAS_DATA_DIR=../shared/data bash benchmarks/dev_evidence.sh [TASK ...]
# RESULTS (default benchmarks/results) is the folder the per-task folders are written into.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A split=([arc_challenge]=validation [math500]=dev [medqa]=dev [commonsenseqa]=dev [mbpp]=test)
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=(arc_challenge math500 medqa commonsenseqa mbpp)
for task in "${tasks[@]}"; do
    python benchmarks/gsm8k_methods.py --task "$task" --split "${split[$task]}" --last 50 \
        --methods single latent_mas --out "${RESULTS:-benchmarks/results}/$task-last50-qwen0.5b"
done
