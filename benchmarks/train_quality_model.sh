#!/usr/bin/env bash
# Issue "sample quality": a larger Fashion-MNIST model for the FD target (DDPM-1000 FD at most
# 2x the real-data floor at n = 10,000), trained on the GPU fast path and evaluated in one go.
# Trains the `mnist` UNet preset (ch 64) with bf16, channels_last, torch.compile and the whole
# step as one CUDA graph, for MINUTES of wall time; exports the fp16 EMA weights (release
# checkpoint + model card) and evaluates FD/precision/recall at n = N with DDPM-1000.
#   DATA: a folder holding FashionMNIST/raw (default: ../shared/data)
#   OUT: where the log, release checkpoint and JSON go (default: runs/quality_large)
#   MINUTES (default 20), BATCH (default 256), N (default 10000)
#   STAGE: "all" (default), "train" (train and export only) or "evaluate" (evaluate the
#     release checkpoint CHECKPOINT, default $OUT/fashion_mnist_large.pt), so that training and
#     evaluation can run on two machines when one machine cannot be held for both.
# The evaluation is the results table's: DDPM-1000, DDIM-100 and DDIM-50 at n = N, and the
# ELBO on 1000 held-out test images.
# On the GPU machine, detached so that it may outlast one 10-minute command:
#   DATA=.devdata OUT=/root/q setsid nohup bash benchmarks/train_quality_model.sh &
# On a CPU, a smoke test of the whole chain: MINUTES=0.2 BATCH=8 N=16 SMOKE=1 bash ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/quality_large}
MINUTES=${MINUTES:-20}
BATCH=${BATCH:-256}
N=${N:-10000}
WORK=${WORK:-/tmp/ddpm_quality_large}
export PYTHONPATH=${PYTHONPATH:-.}:.
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
fast=()
bf16=(--bf16)
timesteps=1000
samplers=ddpm-1000,ddim-100,ddim-50
elbo_n=1000
if [[ -n "${SMOKE:-}" ]]; then  # CPU: no compile, no bf16, a 10-step schedule
  fast=(--no-bf16 --no-channels-last --no-compile)
  bf16=()
  timesteps=10
  samplers=ddpm-10,ddim-5
  elbo_n=16
fi
STAGE=${STAGE:-all}
case "$STAGE" in all|train|evaluate) ;; *) echo "STAGE must be all, train or evaluate, got '$STAGE'" >&2; exit 2;; esac
CHECKPOINT=${CHECKPOINT:-$OUT/fashion_mnist_large.pt}
if [[ "$STAGE" != evaluate ]]; then
${PYTHON:-python3} -m ddpm_lib train --recipe fashion_mnist_large --data-root "$DATA" \
  --num-timesteps "$timesteps" --batch-size "$BATCH" "${fast[@]}" --time-limit "$MINUTES" \
  --no-progress --out-dir "$WORK" > "$OUT/train.log" 2>&1
${PYTHON:-python3} -m ddpm_lib export --checkpoint "$WORK/last.pt" --out "$OUT/fashion_mnist_large.pt" \
  >> "$OUT/train.log" 2>&1
echo trained > "$OUT/TRAINED"
fi
[[ "$STAGE" == train ]] && exit 0
${PYTHON:-python3} -m ddpm_lib evaluate --checkpoint "$CHECKPOINT" --data-root "$DATA" \
  --n "$N" --samplers "$samplers" --elbo-n "$elbo_n" \
  --batch-size 2500 "${bf16[@]}" \
  --out "$OUT/quality_fashion_mnist_large.json" --grids "$OUT" --no-progress \
  > "$OUT/evaluate.log" 2>&1
echo done > "$OUT/DONE"
