#!/usr/bin/env bash
# Issue "sample quality": how much does the hybrid loss with a learned variance (Nichol &
# Dhariwal 2021) tighten the ELBO? Trains the recipe fashion_mnist_hybrid (ddpm_lib.training.
# RECIPES: fashion_mnist_fast's recipe, the mnist_small UNet, batch 512, lr 5e-4, 1000 warm-up
# steps, EMA 0.9995, 14,000 steps, bf16, channels_last, compiled, with var_type learned_range,
# the only change), then evaluates it as the results table does (ELBO on 1000 test images, FD
# at n = N).
#   DATA: a folder holding FashionMNIST/raw (default: ../shared/data)
#   OUT: where the log, release checkpoint and JSON go (default: runs/hybrid)
#   SAMPLERS (default ddpm-1000,ddim-100,ddim-50), N (default 10000)
# On the GPU machine, detached so that it may outlast one 10-minute command:
#   DATA=.devdata OUT=/root/h setsid nohup bash benchmarks/hybrid_loss.sh &
# On a CPU, a smoke test of the whole chain: SMOKE=1 bash benchmarks/hybrid_loss.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/hybrid}
N=${N:-10000}
SAMPLERS=${SAMPLERS:-ddpm-1000,ddim-100,ddim-50}
WORK=${WORK:-/tmp/ddpm_hybrid}
export PYTHONPATH=${PYTHONPATH:-.}:.
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
bf16=(--bf16)
run=()
elbo_n=1000
if [[ -n "${SMOKE:-}" ]]; then  # CPU: no compile, no bf16, a 10-step schedule, 4 steps
  bf16=()
  run=(--no-bf16 --no-channels-last --no-compile --num-timesteps 10 --steps 4 --batch-size 8
       --log-every 2 --save-every 4)
  SAMPLERS=ddpm-10,ddim-5
  N=16
  elbo_n=16
fi
${PYTHON:-python3} -m ddpm_lib train --recipe fashion_mnist_hybrid --data-root "$DATA" \
  "${run[@]}" --no-progress --out-dir "$WORK" > "$OUT/train.log" 2>&1
${PYTHON:-python3} -m ddpm_lib export --checkpoint "$WORK/last.pt" \
  --out "$OUT/fashion_mnist_hybrid.pt" >> "$OUT/train.log" 2>&1
echo trained > "$OUT/TRAINED"
${PYTHON:-python3} -m ddpm_lib evaluate --checkpoint "$OUT/fashion_mnist_hybrid.pt" \
  --data-root "$DATA" --n "$N" --samplers "$SAMPLERS" --elbo-n "$elbo_n" --batch-size 2500 \
  "${bf16[@]}" --out "$OUT/quality_fashion_mnist_hybrid.json" --grids "$OUT" --no-progress \
  > "$OUT/evaluate.log" 2>&1
echo done > "$OUT/DONE"
