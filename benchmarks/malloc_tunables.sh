#!/usr/bin/env bash
# Does glibc's allocator cost time here? Training throughput (one setting, one step of 4
# trajectories) and step costs (batch 1 and 16, cache 150 and 700), each with glibc's default
# malloc settings and with large allocations kept in the heap (mmap threshold 32 MB, the most glibc
# allows; freed memory not trimmed below 1 GB), alternating, ROUNDS rounds. Run it alone:
#
#   DIFFMAS_DATA_DIR=../shared/data bash benchmarks/malloc_tunables.sh 2>&1 | tee benchmarks/results/malloc_tunables.txt
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROUNDS=${ROUNDS:-2}
KEEP="glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
for round in $(seq "$ROUNDS"); do
  for tunables in "" "$KEEP"; do
    echo "== round $round, GLIBC_TUNABLES='$tunables'"
    GLIBC_TUNABLES="$tunables" $PY benchmarks/train_throughput.py --no-checkpointing-row --repeat-question off \
      --steps 1 --out /tmp/diffmas-malloc-train.json | grep "s/trajectory,"
    GLIBC_TUNABLES="$tunables" $PY benchmarks/step_costs.py --batch-size 1 16 --lengths 150 700 \
      --out /tmp/diffmas-malloc-steps.json | grep "^| matmul"
  done
done
