#!/usr/bin/env bash
# The paper's Colored MNIST Vanilla runs (reference README), one per ratio.
# Extra arguments are passed to every run, e.g.: bash scripts/run_cmnist_vanilla.sh --num_steps 1000 --data_dir dataset
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --dataset cmnist --exp=cmnist_0.5_vanilla --lr=0.01 --percent=0.5pct --train_vanilla --tensorboard "$@"
python train.py --dataset cmnist --exp=cmnist_1_vanilla --lr=0.01 --percent=1pct --train_vanilla --tensorboard "$@"
python train.py --dataset cmnist --exp=cmnist_2_vanilla --lr=0.01 --percent=2pct --train_vanilla --tensorboard "$@"
python train.py --dataset cmnist --exp=cmnist_5_vanilla --lr=0.01 --percent=5pct --train_vanilla --tensorboard "$@"
