#!/usr/bin/env bash
# The paper's Corrupted CIFAR-10 Vanilla runs (reference README), one per ratio; data: debiaslab data build cifar10c.
# Extra arguments are passed to every run, e.g.: bash scripts/run_cifar10c_vanilla.sh --num_steps 1000 --wandb
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --dataset cifar10c --exp=cifar10c_0.5_vanilla --lr=0.001 --percent=0.5pct --train_vanilla --tensorboard "$@"
python train.py --dataset cifar10c --exp=cifar10c_1_vanilla --lr=0.001 --percent=1pct --train_vanilla --tensorboard "$@"
python train.py --dataset cifar10c --exp=cifar10c_2_vanilla --lr=0.001 --percent=2pct --train_vanilla --tensorboard "$@"
python train.py --dataset cifar10c --exp=cifar10c_5_vanilla --lr=0.001 --percent=5pct --train_vanilla --tensorboard "$@"
