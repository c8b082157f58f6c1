#!/usr/bin/env bash
# Trains the three models the chapters load, in parallel on one GPU, and exports each as a
# small release checkpoint (fp16 EMA weights + config + loss history + model card) into $OUT
# (or ./checkpoints), with one training log per model.
#   DATA: a folder holding MNIST/raw and FashionMNIST/raw (default: ../shared/data).
#   MINUTES: wall-clock budget per run (default 8); each run also stops at its step count.
# Usage on the GPU machine:  DATA=.devdata OUT=$OUT bash checkpoints/train.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-checkpoints}
MINUTES=${MINUTES:-8}
WORK=${WORK:-/tmp/ddpm_runs}
export PYTHONPATH=${PYTHONPATH:-.}:.
export PYTHONUNBUFFERED=1

common=(--num-timesteps 1000 --schedule linear --lr 4e-4 --warmup 1000 --grad-clip 1.0
        --ema-decay 0.9995 --log-every 500 --save-every 5000 --no-progress
        --time-limit "$MINUTES")

python3 -m ddpm_lib train "${common[@]}" --dataset mnist --split test --holdout 1000 \
  --data-root "$DATA" --preset mnist_small --steps 60000 --batch-size 128 \
  --out-dir "$WORK/mnist" > "$OUT/mnist_train.log" 2>&1 &
python3 -m ddpm_lib train "${common[@]}" --dataset fashion_mnist --data-root "$DATA" \
  --preset mnist_small --steps 60000 --batch-size 128 \
  --out-dir "$WORK/fashion_mnist" > "$OUT/fashion_mnist_train.log" 2>&1 &
python3 -m ddpm_lib train "${common[@]}" --dataset gmm --toy-size 50000 --model mlp \
  --steps 30000 --batch-size 512 --lr 1e-3 \
  --out-dir "$WORK/toy_gmm" > "$OUT/toy_gmm_train.log" 2>&1 &
wait

for name in mnist fashion_mnist toy_gmm; do
  python3 -m ddpm_lib export --checkpoint "$WORK/$name/last.pt" --out "$OUT/$name.pt"
done
