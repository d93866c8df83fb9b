#!/usr/bin/env bash
# The 36-run Colored MNIST table (configs/cmnist_table.toml) on this machine's CPU cores, three ways, in
# wall minutes: one fp32 run per process (`sweep --fuse off`), fused groups in fp32, and fused groups in
# bf16 (`--set cpu_amp=true`); 2 jobs at once, each with half the cores (sweep's default split).
#   bash benchmarks/cmnist_table_speed.sh [STEPS] [DATA_DIR] [OUT]
# STEPS (default 50000, the table's own): every run's steps; a shorter table keeps the table's shape
# (DisEnt's swap and LR decay at a fifth of the steps, weight averaging from there, evaluations every
# 500 steps) so its minutes scale to the full table by 50000 / STEPS. Needs DATA_DIR/cmnist
# (`debiaslab data build cmnist --mnist ../shared/data/mnist.npz`). Not a test: it prints minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-50000}; data=${2:-dataset}; out=${3:-$(mktemp -d)}
fifth=$(( steps / 5 ))
common=(--config configs/cmnist_table.toml --jobs 2 --devices cpu --no_progress
        --set "data_dir=$data" "num_steps=$steps")
[ "$steps" -ne 50000 ] && common+=("curr_step=$fifth" "lr_decay_step=$fifth")
lscpu | grep -m1 "Model name" || true
for way in "lone-fp32:--fuse off" "fused-fp32:--fuse auto" "fused-bf16:--fuse auto --set cpu_amp=true"; do
  name=${way%%:*}; flags=${way#*:}
  t0=$(date +%s)
  # shellcheck disable=SC2086
  python -m debiaslab sweep "${common[@]}" $flags --out "$out/$name" | tail -1
  minutes=$(python -c "print(round(($(date +%s) - $t0) / 60, 1))")
  echo "$name: $minutes wall minutes for 36 runs x $steps steps ($(python -c \
    "print(round($minutes * 50000 / $steps, 1))") minutes scaled to 50,000 steps)"
done
