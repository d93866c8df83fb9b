#!/usr/bin/env bash
# The CUDA checks of the data pipeline, in one go (a GPU machine with PyTorch, torchvision, opencv, scipy):
#   bash benchmarks/cuda_checks.sh CIFAR10_SOURCE [OUT_DIR]
# CIFAR10_SOURCE: anything `debiaslab data build cifar10c --cifar10` takes (e.g. a CIFAR-10 zip or .npz).
# Runs the CUDA tests, builds C-CIFAR10 1pct, compares the in-memory pipeline with a PIL DataLoader
# (bf16 + channels_last on and off), and times the paper's C-CIFAR10 DisEnt command and a 224x224 (BFFHQ-sized) run.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$1; out=${2:-/tmp/debiaslab_cuda}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$out"
py=${PYTHON:-python3}
nvidia-smi -L || true
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
$py -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_transforms.py
$py -m debiaslab data build cifar10c --cifar10 "$src" --out "$out/data" --percent 1 --force
$py benchmarks/cifar10c_pipeline.py --data_dir "$out/data" --percent 1pct --steps 200 --batches 300 --workers 8
$py benchmarks/cifar10c_pipeline.py --data_dir "$out/data" --percent 1pct --steps 200 --batches 300 --workers 8 --no_amp --no_channels_last
for extra in "" "--no_amp --no_channels_last"; do
  $py train.py --dataset cifar10c --exp=cifar10c_1_ours --lr=0.001 --percent=1pct --curr_step=500 --lambda_swap=1 --lambda_dis_align=5 \
    --lambda_swap_align=5 --use_lr_decay --lr_decay_step=10000 --lr_gamma=0.5 --train_ours --tensorboard \
    --data_dir "$out/data" --log_dir "$out/log" --num_steps 1000 --no_progress --overwrite $extra | tail -7
  $py -m debiaslab train --dataset cifar10c --train_vanilla --image_size 224 --batch_size 64 --exp v224 --percent 1pct \
    --data_dir "$out/data" --log_dir "$out/log" --num_steps 300 --valid_freq 300 --no_progress --overwrite $extra | head -1
done
