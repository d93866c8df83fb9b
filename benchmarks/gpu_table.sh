#!/usr/bin/env bash
# The Corrupted CIFAR-10 table on a GPU as one command that ends inside a time budget, resumes
# where it stopped, and then measures fused groups against lone runs:
#
#   BUDGET=540 bash benchmarks/gpu_table.sh OUT              # a GPU machine (PyTorch, torchvision)
#   REHEARSE=1 BUDGET=300 bash benchmarks/gpu_table.sh OUT   # the same path on the CPU, tiny
#
# 1. builds Corrupted CIFAR-10 into DATA (default dataset/) unless it holds every ratio, from
#    CIFAR10 (a zip, folder or .npz `debiaslab data build cifar10c --cifar10` reads; default: the
#    first of dataset/cifar10/ and dataset/cifar10-jpeg.zip (carried copies, see below),
#    shared/data/cifar10-jpeg.zip and ../shared/data/cifar10-jpeg.zip);
# 2. trains the table (configs/cifar10c_table.toml: Vanilla, LfF and DisEnt at the paper's ratios,
#    seeds 0 1 2) with `debiaslab sweep` into WORK/runs (default log/gpu_table, ignored by git, so a
#    warm machine keeps it between calls) as fused groups, one group at a time: seed 0 of every
#    cell first, then the other seeds, so a table cut short still has every cell once;
# 3. copies each finished run's config.json, results.json and metrics.jsonl to OUT/runs/ as it
#    lands (and all of them, with the sweep's logs, to OUT/table_runs.tar.gz at the end);
# 4. at BUDGET - SPEED_SECONDS (or at BUDGET if the speed figures have no time reserved) sends the
#    sweep SIGTERM: each run saves a checkpoint at the step it is at and exits, and the next call
#    of the same command resumes every run from there (finished runs are skipped);
# 5. with the time left, benchmarks/fused_speed.py --arrangement packed: fused groups of K runs
#    against K lone runs in packed processes, both sides captured and bf16 alike, with wall time
#    against kernel time per step and the peak memory of each K, K sized to the GPU's memory
#    (OUT/fused_speed.json).
# The whole command ends within ~15 s of BUDGET (default 540, so one 10-minute device command
# holds it); OUT/gpu_table.log holds all it prints.
#
# REHEARSE=1 runs the identical path on the CPU: a C-CIFAR10 built from 120 training and 20
# test images per class of CIFAR-10, 20-step runs (DisEnt's swap at step 10, the LR decay at 15,
# evaluations every 10 steps, a weight average of decay 0.5), every step captured as on a GPU
# through a stand-in for the CUDA graph that replays eagerly (benchmarks/rehearsal/
# sitecustomize.py). Its files go to log/gpu_table_rehearsal. tests/test_gpu_table.py runs it.
#
# Other settings (environment): METHODS, RATIOS, SEEDS (a part of the table, e.g. SEEDS="0");
# TABLE_K, the most runs in one fused group (default 12); SPEED_SECONDS, the time kept from the
# table for the speed figures (default 150, 30 when rehearsing, 0 without speed figures; all of
# BUDGET: the data is built and nothing else); SPEED_METHODS (default disent); SPEED_K (default
# "1 4 12 24 36", "1 2" when rehearsing; empty: no speed figures); SPEED_WINDOW, the timed
# seconds of each figure (default 5, 1 when rehearsing); REHEARSE_MODEL, the rehearsal's model
# (default resnet18, the table's; mlp is ~10x faster); EARLIER, an earlier call's
# OUT/table_runs.tar.gz, whose finished runs a fresh machine then skips; WORK, DATA; PYTHON
# (default python3).
#
# A device call carries the working tree and its carried paths, 64 MiB in all, and this tree
# weighs ~40 MiB (docs/results/): the 59.3 MiB CIFAR-10 zip does not fit beside it. A warm machine
# keeps ignored folders between calls, so the images can go in parts: unzipped into dataset/cifar10/
# (ignored), four training classes carried a call (~20 MiB), the test split with the last, and
# this command run with the last part (it reads dataset/cifar10/ by default).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: [BUDGET=seconds] [REHEARSE=1] bash benchmarks/gpu_table.sh OUT}
mkdir -p "$out" && out=$(cd "$out" && pwd)
exec > >(tee -a "$out/gpu_table.log") 2>&1

start=$(date +%s)
budget=${BUDGET:-540}
deadline=$((start + budget))
# seconds after BUDGET (or after a later SIGTERM) that the SIGKILL of what has not ended comes:
# a table stopped before BUDGET has the speed figures' time and these seconds to save its runs
grace=10
py=${PYTHON:-python3}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
methods=${METHODS:-vanilla lff disent}
ratios=${RATIOS:-0.5 1 2 5} # configs/cifar10c_table.toml's, the paper's
seeds=${SEEDS:-0 1 2}
if [ "${REHEARSE:-0}" = 1 ]; then
  work=${WORK:-log/gpu_table_rehearsal}
  data=${DATA:-$work/data}
  device=cpu
  model=${REHEARSE_MODEL:-resnet18}
  table_set=(num_steps=20 batch_size=32 valid_freq=10 log_freq=5 curr_step=10 lr_decay_step=5
    wa_decay=0.5 "model=$model")
  speed_set=(--set batch_size=32 "model=$model")
  # every Python process of the sweep and of the speed figures captures through the stand-in
  accel_path=$PWD/src:$PWD/benchmarks/rehearsal
  speed_seconds=30 speed_k=${SPEED_K-1 2} speed_window=${SPEED_WINDOW:-1}
else
  work=${WORK:-log/gpu_table}
  data=${DATA:-dataset}
  device=cuda
  table_set=() speed_set=()
  accel_path=$PYTHONPATH
  speed_seconds=150 speed_k=${SPEED_K-1 4 12 24 36} speed_window=${SPEED_WINDOW:-5}
fi
mkdir -p "$work/runs" "$out/runs" && runs=$(cd "$work/runs" && pwd)
failed=0

now() { date +%s; }
say() { echo "[gpu_table +$(($(now) - start))s] $*"; }

# Each finished run (results.json is written last) to $out/runs/<dataset>/<run>/ with its
# config.json and metrics.jsonl: copied whole into a .partial folder and renamed, so OUT never
# holds half a run, and copied once (a run already there with the same results.json is left).
copy_landed() {
  local res dir name dest
  for res in "$runs"/*/*/results.json; do
    [ -f "$res" ] || continue
    dir=${res%/results.json}
    name=${dir#"$runs"/}
    dest=$out/runs/$name
    cmp -s "$res" "$dest/results.json" && continue
    rm -rf "$dest.partial" && mkdir -p "$dest.partial"
    cp "$dir/config.json" "$dir/metrics.jsonl" "$res" "$dest.partial/" || continue
    rm -rf "$dest" && mv "$dest.partial" "$dest"
    say "landed: $name"
  done
}

# run_until TIME leader|group WHAT COMMAND...: runs COMMAND in a process group of its own,
# copying landed runs meanwhile, until it ends or TIME comes. Then SIGTERM goes to the command
# alone (leader: a sweep passes it on to its runs, once; a second one would stop them without
# their checkpoint) or to its whole group (group), and SIGKILL to the group $grace s after
# BUDGET's end or the SIGTERM, whichever is later. Returns the command's status, or 124 when it
# was stopped.
run_until() {
  local until=$1 mode=$2 what=$3 pid stopped=0
  shift 3
  setsid "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$stopped" = 0 ] && [ "$(now)" -ge "$until" ]; then
      say "budget: SIGTERM to the $what"
      if [ "$mode" = leader ]; then kill -TERM "$pid"; else kill -TERM -- "-$pid"; fi
      stopped=$(now)
    elif [ "$stopped" != 0 ] && [ "$(now)" -ge $((grace + (stopped > deadline ? stopped : deadline))) ]; then
      say "budget: SIGKILL to what is left of it"
      kill -KILL -- "-$pid" 2>/dev/null
    fi
    copy_landed
    sleep 1
  done
  wait "$pid"
  local rc=$?
  copy_landed
  if [ "$stopped" != 0 ]; then return 124; fi
  return "$rc"
}

say "budget ${budget} s (until $(date -d "@$deadline" +%T)), device $device, runs in $runs, data in $data"
if [ "$device" = cuda ]; then
  nvidia-smi -L || true
  $py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
fi

# A fresh machine holds no runs: EARLIER=an earlier call's OUT/table_runs.tar.gz (carried) puts its
# finished runs back, and the sweep skips them (a run is finished by its results.json; the data
# checksums its config.json recorded are checked against the data here). Unfinished runs start
# again there: their checkpoints (~0.4 GB a DisEnt run) never leave the machine that wrote them.
if [ -n "${EARLIER:-}" ]; then
  unpacked=$(mktemp -d)
  tar -xzf "$EARLIER" -C "$unpacked" runs
  for dir in "$unpacked"/runs/*/*/; do
    name=${dir#"$unpacked"/runs/} && name=${name%/}
    if [ ! -e "$runs/$name" ]; then mkdir -p "$runs/${name%/*}" && cp -r "$dir" "$runs/$name"; fi
  done
  rm -rf "$unpacked"
  say "earlier finished runs from $EARLIER: $(find "$runs" -name results.json | wc -l) in $runs"
fi

# -- 1. the data ------------------------------------------------------------------------------
missing=0
[ -f "$data/cifar10c/manifest.json" ] || missing=1
for r in $ratios; do [ -d "$data/cifar10c/${r}pct" ] || missing=1; done
if [ "$missing" = 1 ]; then
  src=${CIFAR10:-}
  if [ -z "$src" ]; then
    for c in dataset/cifar10 dataset/cifar10-jpeg.zip shared/data/cifar10-jpeg.zip \
      ../shared/data/cifar10-jpeg.zip; do
      if [ -e "$c" ]; then src=$c && break; fi
    done
  fi
  if [ -z "$src" ] || [ ! -e "$src" ]; then
    say "no CIFAR-10 to build from: set CIFAR10=... or carry dataset/cifar10/ (see the header)"
    exit 2
  fi
  build=(--cifar10 "$src" --percent $ratios)
  if [ "${REHEARSE:-0}" = 1 ]; then
    # the first images of each class, as a zip of the same layout: a build of seconds
    tiny=$work/tiny-cifar10.zip
    $py -S - "$src" "$tiny" <<'EOF'
import sys, zipfile

per_class = {"train": 120, "test": 20}  # 0.5 % of 110 training images a class still conflict
with zipfile.ZipFile(sys.argv[1]) as src, zipfile.ZipFile(sys.argv[2], "w") as dst:
    taken = {}
    for name in sorted(n for n in src.namelist() if n.endswith(".jpg")):
        split, label = name.split("/")[-3:-1]
        if taken.get((split, label), 0) < per_class[split]:
            taken[split, label] = taken.get((split, label), 0) + 1
            dst.writestr(name, src.read(name))
EOF
    build=(--cifar10 "$tiny" --percent $ratios --valid_size 100)
  fi
  say "building Corrupted CIFAR-10 (${ratios// /, } pct) from ${build[1]}"
  run_until "$deadline" group build $py -m debiaslab data build cifar10c "${build[@]}" --out "$data" \
    --force --workers "$(nproc)"
  rc=$?
  if [ "$rc" != 0 ]; then
    say "the build did not finish (status $rc)"
    exit 1
  fi
fi

# -- 2.-4. the table, seed 0 of every cell first ------------------------------------------------
[ -n "${speed_k// /}" ] || speed_seconds=0 # no speed figures asked for: the table has it all
speed_seconds=${SPEED_SECONDS:-$speed_seconds}
table_deadline=$((deadline - speed_seconds))
first=${seeds%% *}
rest=${seeds#"$first"}
for pass in "$first" "$rest"; do
  [ -n "${pass// /}" ] || continue
  if [ $((table_deadline - $(now))) -le 5 ]; then # a sweep would only start and stop
    say "table: stopped at its time, before seeds ${pass# }; the same command resumes it"
    break
  fi
  say "table: seeds ${pass# }"
  PYTHONPATH=$accel_path run_until "$table_deadline" leader sweep \
    $py -m debiaslab sweep --config configs/cifar10c_table.toml --methods $methods \
    --ratios $ratios --seeds $pass --set "data_dir=$data" "${table_set[@]}" --out "$runs" \
    --devices "$device" --runs_per_device 1 --fuse auto --fuse_max "${TABLE_K:-12}" --no_progress
  rc=$?
  if [ "$rc" = 124 ]; then
    say "table: stopped at its time, in seeds ${pass# }; the same command resumes it"
    break
  elif [ "$rc" != 0 ]; then
    say "table: the sweep ended with status $rc (failed runs: $runs/.sweep-logs)"
    failed=1
  fi
done
planned=$(($(wc -w <<<"$methods") * $(wc -w <<<"$ratios") * $(wc -w <<<"$seeds")))
landed=$(find "$out/runs" -name results.json 2>/dev/null | wc -l)
say "table: $landed runs finished in $out/runs ($planned in this call's table)"
logs=()
for f in .sweep-logs sweep.json; do [ -e "$runs/$f" ] && logs+=("$f"); done
tar -czf "$out/table_runs.tar.gz" -C "$out" runs ${logs[@]+-C "$runs" "${logs[@]}"}

# -- 5. the speed figures ---------------------------------------------------------------------
left=$((deadline - $(now)))
if [ -z "${speed_k// /}" ]; then
  say "speed: none asked for (SPEED_K is empty)"
elif [ "$left" -lt 20 ]; then
  say "speed: skipped, ${left} s left"
else
  say "speed: fused K against lone runs, ${left} s left"
  PYTHONPATH=$accel_path run_until "$deadline" group "speed figures" $py benchmarks/fused_speed.py \
    --device "$device" --arrangement packed --dataset cifar10c --methods ${SPEED_METHODS:-disent} \
    --K $speed_k --seconds "$speed_window" --deadline $((deadline - 3)) \
    --json "$out/fused_speed.json" "${speed_set[@]}"
  rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 124 ] || failed=1
fi
say "done, $(($(now) - start)) s of a ${budget} s budget"
exit "$failed"
