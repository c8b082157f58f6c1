#!/usr/bin/env bash
# Trains the three models the chapters load, each by its recipe (ddpm_lib.training.RECIPES, the
# same objects the chapters fall back to), in parallel on one GPU, and exports each as a small
# release checkpoint (fp16 EMA weights + config + loss history + model card) into $OUT (or
# ./checkpoints), with one training log per model.
#   DATA: a folder holding MNIST/raw and FashionMNIST/raw (default: ../shared/data).
#   MINUTES: wall-clock budget per run (the recipes' 8 by default); each run also stops at its
#   step count.
# Usage on the GPU machine:  DATA=.devdata OUT=$OUT bash checkpoints/train.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-checkpoints}
MINUTES=${MINUTES:-8}
WORK=${WORK:-/tmp/ddpm_runs}
export PYTHONPATH=${PYTHONPATH:-.}:.
export PYTHONUNBUFFERED=1

common=(--no-progress --time-limit "$MINUTES")

python3 -m ddpm_lib train --recipe mnist --data-root "$DATA" "${common[@]}" \
  --out-dir "$WORK/mnist" > "$OUT/mnist_train.log" 2>&1 &
python3 -m ddpm_lib train --recipe fashion_mnist --data-root "$DATA" "${common[@]}" \
  --out-dir "$WORK/fashion_mnist" > "$OUT/fashion_mnist_train.log" 2>&1 &
python3 -m ddpm_lib train --recipe toy_gmm "${common[@]}" \
  --out-dir "$WORK/toy_gmm" > "$OUT/toy_gmm_train.log" 2>&1 &
wait

for name in mnist fashion_mnist toy_gmm; do
  python3 -m ddpm_lib export --checkpoint "$WORK/$name/last.pt" --out "$OUT/$name.pt"
done
