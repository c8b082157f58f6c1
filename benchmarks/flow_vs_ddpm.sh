#!/usr/bin/env bash
# Chapter 9 (flow matching), like for like: the same UNet (mnist_small, 1.6M parameters), the same
# Fashion-MNIST training split, the same GPU fast path (bf16, channels_last, torch.compile) and the
# same wall time (the recipes' 5-minute limit) for a flow-matching model (recipe
# fashion_mnist_flow) and a DDPM ε-model (recipe fashion_mnist_fast with --time-limit 5), trained
# one after the other on the same GPU. Then both are measured by the book's evaluator at N samples
# (FD with its real-data floor and the calibration ladder): Fréchet distance against the number of
# network evaluations, Euler and Heun from 4 to 100 evaluations for both models (the DDPM model
# through its probability-flow ODE, plus DDIM, its Euler step in the right coordinates), and the
# ODE bits/dim of ODE_N test images for both with one estimator (ddpm_lib.flow.model_log_likelihood).
#   DATA: a folder holding FashionMNIST/raw (default: ../shared/data)
#   OUT: where the logs, release checkpoint, grids and JSON go (default: runs/flow)
#   N (default 10000), ODE_N (default 1000), MINUTES (default 5)
#   PARALLEL=1: train (then evaluate) the two models at the same time on the one GPU, each with
#   an equal share of it, instead of one after the other
# On the GPU machine, detached so that it may outlast one 10-minute command:
#   DATA=.devdata OUT=/root/f setsid nohup bash benchmarks/flow_vs_ddpm.sh &
# Then: python benchmarks/plot_flow.py OUT/flow_vs_ddpm_*.json (table and figure).
# On a CPU, a smoke test of the whole chain: SMOKE=1 bash benchmarks/flow_vs_ddpm.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/flow}
N=${N:-10000}
ODE_N=${ODE_N:-1000}
MINUTES=${MINUTES:-5}
WORK=${WORK:-/tmp/ddpm_flow}
export PYTHONPATH=${PYTHONPATH:-.}:.
export PYTHONUNBUFFERED=1
# Euler K and Heun K/2 steps: 4, 6, 10, 20, 50 and 100 network evaluations (a diffusion model's
# probability-flow ODE ends with one more call, Tweedie's x̂_0: evaluate records the count).
ODE="euler-4,euler-6,euler-10,euler-20,euler-50,euler-100,heun-2,heun-3,heun-5,heun-10,heun-25,heun-50"
DDIM="ddim-4,ddim-6,ddim-10,ddim-20,ddim-50,ddim-100"
run=()
if [[ -n "${SMOKE:-}" ]]; then  # CPU: no compile, no bf16, a 10-step schedule, 4 steps
  run=(--no-bf16 --no-channels-last --no-compile --num-timesteps 10 --steps 4 --batch-size 8
       --log-every 2 --save-every 4)
  N=40
  ODE_N=4
  ODE="euler-2,heun-1"
  DDIM="ddim-2"
fi
mkdir -p "$OUT"
train() {  # train MODEL: the recipe, then the release checkpoint
  local model=$1 recipe=(--recipe fashion_mnist_flow)
  [[ $model == ddpm ]] && recipe=(--recipe fashion_mnist_fast)
  ${PYTHON:-python3} -m ddpm_lib train "${recipe[@]}" --time-limit "$MINUTES" --data-root "$DATA" \
    "${run[@]}" --no-progress --out-dir "$WORK/$model" > "$OUT/train_$model.log" 2>&1
  ${PYTHON:-python3} -m ddpm_lib export --checkpoint "$WORK/$model/last.pt" \
    --out "$OUT/fashion_mnist_$model.pt" >> "$OUT/train_$model.log" 2>&1
}
evaluate() {  # evaluate MODEL SAMPLERS
  ${PYTHON:-python3} -m ddpm_lib evaluate --checkpoint "$OUT/fashion_mnist_$1.pt" \
    --data-root "$DATA" --n "$N" --samplers "$2" --batch-size 2500 --elbo-n 0 \
    --ode-n "$ODE_N" --out "$OUT/flow_vs_ddpm_$1.json" --grids "$OUT/grids" \
    --no-progress > "$OUT/evaluate_$1.log" 2>&1
}
if [[ -n "${PARALLEL:-}" ]]; then  # both at once, sharing the GPU equally (same code, same size)
  train flow & train ddpm & wait
else
  train flow; train ddpm
fi
echo trained > "$OUT/TRAINED"
if [[ -n "${PARALLEL:-}" ]]; then
  evaluate flow "$ODE" & evaluate ddpm "$ODE,$DDIM" & wait
else
  evaluate flow "$ODE"; evaluate ddpm "$ODE,$DDIM"
fi
${PYTHON:-python3} benchmarks/flow_card.py "$OUT/fashion_mnist_flow.pt" \
  "$OUT/flow_vs_ddpm_flow.json" "$OUT/flow_vs_ddpm_ddpm.json" >> "$OUT/evaluate_flow.log" 2>&1
echo done > "$OUT/DONE"
