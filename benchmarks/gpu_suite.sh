#!/usr/bin/env bash
# Everything a lent GPU is for, in one resumable script: the CUDA tests, the training and the
# evaluation throughput benchmarks (each with its plain Hugging Face anchor, side by side), and an
# experiment pipeline (collect, train, evaluate, compare), written into benchmarks/results/gpu-<device>/.
#
#   bash benchmarks/gpu_suite.sh                      # on one CUDA GPU, from the repository root
#   DEVICE=cpu SPEC=tiny TASK=synthetic-arith EXCLUDE_LAST=500 PROBLEMS=4 BATCH=2 TRAIN_BATCHES=2 \
#     LATENT=2 MAX_NEW=16 EXPERIMENT=DIR bash benchmarks/gpu_suite.sh   # a CPU dry run, tiny model
#
# Stages, each skipped when its result is already in the results folder (delete it to run again):
#   tests     tests/test_cuda.py                                               -> tests.log
#   train     benchmarks/reader_cost.py per micro-batch in TRAIN_BATCHES       -> train-throughput-bN.json
#   eval      benchmarks/eval_throughput.py at batch BATCH                      -> eval-throughput.json
#   pipeline  experiments/run.py EXPERIMENT --set device=DEVICE, eval batch BATCH -> pipeline/NAME/results
#
# The throughput stages run on random weights with the architecture and tokenizer of SPEC (a
# folder written here by `python benchmarks/random_model.py spec MODEL .gpu/MODEL`, about 11 MiB;
# 'tiny' for the tests' model): step costs do not depend on the weights, and the machine this
# project is lent takes no registry traffic and at most 64 MiB of files, far less than any
# checkpoint. The pipeline needs the real weights of its experiment's model: it runs where that
# model is installed (`diffmas models install NAME`, or `--gguf FILE` offline) and is skipped,
# saying so, where it is not. GSM8K is read from DIFFMAS_DATA_DIR (default .gpu/data, a copy of
# ../shared/data/gsm8k carried with the tree).
#
# Settings (environment): DEVICE (cuda), PYTHON (python3), SPEC (.gpu/qwen2.5-coder-0.5b-instruct),
# TASK (gsm8k), EXCLUDE_LAST (1000: training problems are TASK's train split but these), BATCH (64),
# PROBLEMS (128), MAX_NEW (256: the answer budget, half of it each text agent's), TRAIN_BATCHES
# ("4 16"), LATENT (10), EXPERIMENT
# (experiments/reader-qwen1.5b-dev), RESULTS (benchmarks/results/gpu-<device name>), WORK (where
# random models and training runs go; default /tmp/diffmas-gpu-suite).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SPEC=${SPEC:-.gpu/qwen2.5-coder-0.5b-instruct}
TASK=${TASK:-gsm8k}
EXCLUDE_LAST=${EXCLUDE_LAST:-1000}
MAX_NEW=${MAX_NEW:-256}
BATCH=${BATCH:-64}
PROBLEMS=${PROBLEMS:-128}
TRAIN_BATCHES=${TRAIN_BATCHES:-4 16}
LATENT=${LATENT:-10}
EXPERIMENT=${EXPERIMENT:-experiments/reader-qwen1.5b-dev}
WORK=${WORK:-/tmp/diffmas-gpu-suite}
export DIFFMAS_DATA_DIR=${DIFFMAS_DATA_DIR:-.gpu/data}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout itself: no install needed there

if [[ $DEVICE == cuda* ]]; then
  # "NVIDIA H100 80GB HBM3" -> h100
  name=$("$PY" -c 'import torch; print(torch.cuda.get_device_name().split()[1].lower())')
else
  name=$DEVICE
fi
RESULTS=${RESULTS:-benchmarks/results/gpu-$name}
mkdir -p "$RESULTS" "$WORK"
started=$SECONDS
declare -a summary

stage() {  # stage NAME RESULT COMMAND...: run COMMAND unless RESULT exists, log into RESULTS
  local stage=$1 result=$2 t0=$SECONDS rc=0
  shift 2
  if [ -e "$result" ]; then
    echo "== $stage: done ($result)"
    summary+=("$stage: done earlier")
    return 0
  fi
  echo "== $stage: $*"
  "$@" > >(tee "$RESULTS/$stage.log") 2>&1 || rc=$?
  summary+=("$stage: $([ $rc -eq 0 ] && echo ok || echo "failed (exit $rc)") in $((SECONDS - t0)) s")
  return 0
}

"$PY" - <<EOF | tee "$RESULTS/environment.txt"
import platform, torch, transformers, peft
print("device:", torch.cuda.get_device_name() if "$DEVICE".startswith("cuda") else "$DEVICE")
print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
print("python", platform.python_version())
EOF

tests() {
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py && touch "$RESULTS/tests.passed"
}
stage tests "$RESULTS/tests.passed" tests

model=$WORK/random-$(basename "$SPEC")
if [ ! -f "$model/config.json" ]; then
  "$PY" benchmarks/random_model.py build "$SPEC" "$model"
fi

for b in $TRAIN_BATCHES; do
  stage "train-b$b" "$RESULTS/train-throughput-b$b.json" \
    "$PY" benchmarks/reader_cost.py --model "$model" --device "$DEVICE" --task "$TASK" \
    --exclude-last "$EXCLUDE_LAST" --batch-size "$b" --steps 2 --latent-steps "$LATENT" --out "$RESULTS/train-throughput-b$b.json"
done

stage eval "$RESULTS/eval-throughput.json" \
  "$PY" benchmarks/eval_throughput.py --model "$model" --device "$DEVICE" --task "$TASK" \
  --problems "$PROBLEMS" --batch-size "$BATCH" --latent-steps "$LATENT" \
  --max-new-tokens "$MAX_NEW" --agent-max-new-tokens $((MAX_NEW / 2)) --out "$RESULTS/eval-throughput.json"

pipeline() {
  local folder=$RESULTS/pipeline/$(basename "$EXPERIMENT")
  mkdir -p "$folder"
  cp "$EXPERIMENT/experiment.yaml" "$folder/experiment.yaml"
  "$PY" experiments/run.py "$folder" --set "device=$DEVICE" --set "eval.batch_size=$BATCH" \
    --runs "$WORK/runs/$(basename "$EXPERIMENT")" && touch "$RESULTS/pipeline.done"
}
needs=$("$PY" - "$EXPERIMENT" <<'EOF'
import sys, yaml
from pathlib import Path
from diffmas.models.store import is_cached
from diffmas.models.registry import get_offline_model
names = set()
for step in yaml.safe_load((Path(sys.argv[1]) / "experiment.yaml").read_text())["steps"]:
    (options,) = step.values()
    for source in [options] + ([yaml.safe_load(Path(options["config"]).read_text())] if "config" in options else []):
        if isinstance(source.get("model"), str):
            names.add(source["model"])
missing = [n for n in sorted(names) if not Path(n).is_dir() and get_offline_model(n) and not is_cached(n)]
print(" ".join(missing))
EOF
)
if [ -n "$needs" ]; then
  echo "== pipeline: skipped: $EXPERIMENT needs $needs, not installed here (diffmas models install NAME [--gguf FILE])" \
    | tee "$RESULTS/pipeline.log"
  summary+=("pipeline: skipped, $needs not installed")
else
  stage pipeline "$RESULTS/pipeline.done" pipeline
fi

echo
echo "gpu suite on $name, $((SECONDS - started)) s, results in $RESULTS:"
printf '  %s\n' "${summary[@]}"
