#!/usr/bin/env bash
# Chapter 8 (guidance): trains the recipe fashion_mnist_cond (ddpm_lib.training.RECIPES:
# fashion_mnist_fast's recipe, the mnist_small UNet with a label embedding, batch 512, lr 5e-4,
# 14,000 steps, bf16, channels_last, compiled; class-conditional, labels dropped to the null
# label at rate 0.1), exports the release checkpoint, then measures classifier-free guidance:
# for each weight w, N samples (every class equally often) with DDIM-100, the shipped
# classifier's accuracy against the requested label and the Fréchet distance with its
# real-data floor (python -m ddpm_lib evaluate --guidance), plus a row of 8 samples per class;
# then the graphed DDPM-1000 sampler at WEIGHTS2 (default 0,2) on N2 (default 2000) samples.
#   DATA: a folder holding FashionMNIST/raw (default: ../shared/data)
#   OUT: where the logs, release checkpoint, grids and JSON go (default: runs/guidance)
#   WEIGHTS (default 0,0.5,1,2,4,8), SAMPLER (default ddim-100), N (default 10000)
# On the GPU machine, detached so that it may outlast one 10-minute command:
#   DATA=.devdata OUT=/root/g setsid nohup bash benchmarks/guidance.sh &
# On a CPU, a smoke test of the whole chain: SMOKE=1 bash benchmarks/guidance.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/guidance}
N=${N:-10000}
WEIGHTS=${WEIGHTS:-0,0.5,1,2,4,8}
SAMPLER=${SAMPLER:-ddim-100}
N2=${N2:-2000}
WEIGHTS2=${WEIGHTS2:-0,2}
SAMPLER2=${SAMPLER2:-ddpm-1000}
WORK=${WORK:-/tmp/ddpm_guidance}
export PYTHONPATH=${PYTHONPATH:-.}:.
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
run=()
if [[ -n "${SMOKE:-}" ]]; then  # CPU: no compile, no bf16, a 10-step schedule, 4 steps
  run=(--no-bf16 --no-channels-last --no-compile --num-timesteps 10 --steps 4 --batch-size 8
       --log-every 2 --save-every 4)
  SAMPLER=ddim-5
  N=80
  WEIGHTS=0,2
  N2=80
  SAMPLER2=ddpm-10
fi
${PYTHON:-python3} -m ddpm_lib train --recipe fashion_mnist_cond --data-root "$DATA" \
  "${run[@]}" --no-progress --out-dir "$WORK" > "$OUT/train.log" 2>&1
${PYTHON:-python3} -m ddpm_lib export --checkpoint "$WORK/last.pt" \
  --out "$OUT/fashion_mnist_cond.pt" >> "$OUT/train.log" 2>&1
echo trained > "$OUT/TRAINED"
${PYTHON:-python3} -m ddpm_lib evaluate --checkpoint "$OUT/fashion_mnist_cond.pt" \
  --data-root "$DATA" --n "$N" --samplers "$SAMPLER" --guidance "$WEIGHTS" --batch-size 2500 \
  --out "$OUT/guidance_fashion_mnist_cond.json" --grids "$OUT" --no-progress \
  > "$OUT/evaluate.log" 2>&1
${PYTHON:-python3} benchmarks/guidance_card.py "$OUT/fashion_mnist_cond.pt" \
  "$OUT/guidance_fashion_mnist_cond.json" >> "$OUT/evaluate.log" 2>&1
# The graphed DDPM-1000 sampler with guidance, at two weights (n = N2: a smaller check).
${PYTHON:-python3} -m ddpm_lib evaluate --checkpoint "$OUT/fashion_mnist_cond.pt" \
  --data-root "$DATA" --n "$N2" --samplers "$SAMPLER2" --guidance "$WEIGHTS2" \
  --batch-size 2000 --out "$OUT/guidance_fashion_mnist_cond_${SAMPLER2}_n${N2}.json" \
  --no-progress > "$OUT/evaluate2.log" 2>&1
echo done > "$OUT/DONE"
