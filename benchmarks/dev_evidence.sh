#!/usr/bin/env bash
# Issue 4's evidence: single vs latent_mas, greedy, Qwen2.5-Coder-0.5B-Instruct, on the last 50
# problems of each development set in ../shared/data; one results folder per task. About 30
# minutes on 2 CPU cores for all five; run it alone (other heavy processes skew the timings).
#   DIFFMAS_DATA_DIR=../shared/data bash benchmarks/dev_evidence.sh [TASK ...]
# PREFIX (default dev) names the folders: benchmarks/results/PREFIX-TASK.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A split=([arc_challenge]=validation [math500]=dev [medqa]=dev [commonsenseqa]=dev [mbpp]=test)
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=(arc_challenge math500 medqa commonsenseqa mbpp)
for task in "${tasks[@]}"; do
    python benchmarks/gsm8k_methods.py --task "$task" --split "${split[$task]}" --last 50 \
        --methods single latent_mas --out "benchmarks/results/${PREFIX:-dev}-$task"
done
