#!/usr/bin/env bash
# The results table of the performance page (issue "sample quality and likelihood"), on one GPU:
# train the two feature classifiers, then evaluate every shipped checkpoint. Writes to $OUT
# (default benchmarks/results/quality). Data: $DDPM_DATA_ROOT or ../shared/data. The committed
# results ran as three device commands of at most 10 minutes each, with these same commands
# (see benchmarks/results/README.md); this script runs them all, about 21 minutes on an H100.
# fashion_mnist_large.pt and fashion_mnist_hybrid.pt were evaluated right after training them, by
# benchmarks/train_quality_model.sh and benchmarks/hybrid_loss.sh.
#   bash benchmarks/run_quality.sh
set -euo pipefail
OUT=${OUT:-benchmarks/results/quality}
mkdir -p "$OUT/grids"
py=${PYTHON:-python3}
for ds in fashion_mnist:15 mnist:30; do
  name=${ds%%:*}; epochs=${ds##*:}
  $py -m ddpm_lib classifier --dataset "$name" --epochs "$epochs" --no-progress \
    --out "$OUT/classifier_$name.pt"
done
for ck in fashion_mnist fashion_mnist_fast fashion_mnist_hybrid fashion_mnist_large mnist; do
  clf=${ck%_fast}; clf=${clf%_hybrid}; clf=${clf%_large}
  $py -m ddpm_lib evaluate --checkpoint "checkpoints/$ck.pt" --classifier "$OUT/classifier_$clf.pt" \
    --n 10000 --samplers ddpm-1000,ddim-100,ddim-50 --elbo-n 1000 --batch-size 2500 --bf16 \
    --out "$OUT/quality_$ck.json" --grids "$OUT/grids" --no-progress
done
$py -m ddpm_lib evaluate --checkpoint checkpoints/toy_gmm.pt --n 10000 \
  --samplers ddpm-1000,ddim-100,ddim-50 --batch-size 10000 --out "$OUT/quality_toy_gmm.json" \
  --no-progress
