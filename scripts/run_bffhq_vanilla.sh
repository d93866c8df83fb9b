#!/usr/bin/env bash
# The paper's BFFHQ Vanilla run (reference README); data: BFFHQ in the reference layout under dataset/bffhq.
# Extra arguments are passed to every run, e.g.: bash scripts/run_bffhq_vanilla.sh --num_steps 1000 --wandb
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --dataset bffhq --exp=bffhq_0.5_vanilla --lr=0.0001 --percent=0.5pct --train_vanilla --tensorboard "$@"
