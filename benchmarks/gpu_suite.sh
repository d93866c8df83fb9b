#!/usr/bin/env bash
# The single runs' GPU measurements, in one run (a machine with PyTorch + torchvision + CUDA):
#   bash benchmarks/gpu_suite.sh CIFAR10_SOURCE MNIST_SOURCE [OUT] [REFERENCE_CLONE]
# The C-CIFAR10 table as fused groups and the fused groups' speed figures are a command of their
# own that fits one device call and resumes on the next: benchmarks/gpu_table.sh.
# CIFAR10_SOURCE: what `debiaslab data build cifar10c --cifar10` reads (../shared/data/cifar10-jpeg.zip, or a
# folder of train/<class>/ and test/<class>/ images); MNIST_SOURCE: ../shared/data/mnist.npz or "-" for none;
# REFERENCE_CLONE: a clone of kakaoenterprise/Learning-Debiased-Disentangled to time (optional, never
# committed). SUITE_BUDGET=seconds skips the parts that would not end in time (unset: no limit).
# 1. builds C-CIFAR10 0.5pct and 5pct (all four ratios without SUITE_BUDGET; and CMNIST) into
#    dataset/, while 2. the CUDA tests run;
# 3. benchmarks/profile_step.py (what bounds DisEnt's C-CIFAR10 step) and benchmarks/gpu_speed.py:
#    steps/s eager vs captured (C-CIFAR10 and CMNIST, paper commands through `train`), the paper's
#    own code, packed K = 1, 2, 4, 8 (and under MPS), compiled.
set -uo pipefail
cd "$(dirname "$0")/.."
cifar=$1; mnist=${2:--}; out=${3:-/tmp/debiaslab_gpu}; ref=${4:-}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 SUITE_START=${SUITE_START:-$(date +%s)}
py=${PYTHON:-python3}
mkdir -p "$out"
nvidia-smi -L || true
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, 'SMs')"
percents=${PERCENTS:-"0.5 5"}
[ -z "${SUITE_BUDGET:-}" ] && percents="0.5 1 2 5"
( $py -m debiaslab data build cifar10c --cifar10 "$cifar" --out dataset --percent $percents --workers 12 \
    > "$out/build_cifar10c.log" 2>&1
  if [ "$mnist" != "-" ]; then $py -m debiaslab data build cmnist --mnist "$mnist" --out dataset --percent 0.5 \
    > "$out/build_cmnist.log" 2>&1; fi ) &
build=$!
t0=$(date +%s)
timeout ${TEST_TIMEOUT:-240} $py -m pytest -q -s -p no:cacheprovider tests/test_cuda.py tests/test_graphs.py 2>&1 \
  | tee "$out/cuda_tests.log" | grep -E "passed|failed|error|worst|FAILED|Error" | tail -20
echo "CUDA tests: $(( $(date +%s) - t0 )) s"
wait $build; echo "data built at +$(( $(date +%s) - SUITE_START )) s: $(tail -1 "$out/build_cifar10c.log")"
[ -d dataset/cifar10c/0.5pct ] && timeout 90 $py benchmarks/profile_step.py --data_dir dataset 2>&1 | tee "$out/profile.log" \
  | grep -v Warning
budget_args=(); [ -n "${SUITE_BUDGET:-}" ] && budget_args=(--budget "$SUITE_BUDGET")
ref_args=(); [ -n "$ref" ] && ref_args=(--reference "$ref")
$py benchmarks/gpu_speed.py --data_dir dataset --out "$out" "${budget_args[@]}" "${ref_args[@]}" \
  ${SPEED_ARGS:-}
echo "suite done at +$(( $(date +%s) - SUITE_START )) s; the table and the fused groups' figures:" \
  "BUDGET=540 bash benchmarks/gpu_table.sh OUT"
