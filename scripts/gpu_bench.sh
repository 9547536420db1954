#!/bin/bash
# The GPU benchmark at SD3-medium scale (random weights, no download) as one script with a
# deadline, for a GPU machine without Snakemake or network (README, "Performance"):
#
#   DEADLINE=540 bash scripts/gpu_bench.sh OUT_DIR [STEP...]
#
# Steps run in the order given, each with the seconds left before DEADLINE (seconds after the
# start); a step that would start with less than its minimum is skipped, and OUT_DIR/bench.tar.gz
# is re-packed after every step, so a cut run keeps what it measured. Steps: bench_<variant>
# (`python -m vggflow bench` of scripts/bench_variants.py's variant, one timed update; compiled
# variants after one untimed update; update_cost_<variant>.csv, and update_regions_<variant>.csv
# with seconds, FLOPs and MFU per named region of the update), profile
# (scripts/profile_sd3_forward.py with --compile and kernel tables), profile_value
# (scripts/profile_value_update.py: VGG-Flow's reward-gradient pass and value U-Net by precision,
# chunk, cuDNN autotuner, layout and compilation, with kernel tables). Default steps: the
# measurements still missing from the README, most important first. WHEEL_DIR: a folder of
# wheels (diffusers, transformers, peft, ... for a machine that lacks them) to install into
# /tmp/site first.
# BENCH_CONFIG (default config/bench_sd3.yaml, whose random weights are written if missing)
# names another experiment config; the tests run the script on tiny-sd3 on the CPU, with imports
# limited to the GPU image's packages and the carried wheels (scripts/gpu_wheels.txt).
# GIT_COMMIT: the commit to record in device.txt (the GPU machine's copy of the tree has no .git).
set -u -o pipefail
OUT_DIR=${1:?usage: bash scripts/gpu_bench.sh OUT_DIR [STEP...]}
shift
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(bench_vggflow bench_vggflow_value_heads64 profile_value
                                 bench_vggflow_forward_fd_compiled
                                 bench_vggflow_diffusers_attention profile bench_vggflow_1024)
START=$(date +%s)
DEADLINE=${DEADLINE:-540}
WORK=$(mktemp -d)
mkdir -p "$OUT_DIR"
elapsed() { echo $(( $(date +%s) - START )); }
pack() { tar -C "$WORK" -czf "$OUT_DIR/bench.tar.gz" . ; }
trap 'pack; rm -rf "$WORK"' EXIT  # an early exit still brings back its logs

if [ -n "${WHEEL_DIR:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEEL_DIR"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$WORK/device.txt" 2>&1
cat "$WORK/device.txt"
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" \
  | tee -a "$WORK/device.txt" || exit 1
echo "commit ${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" | tee -a "$WORK/device.txt"

variants=()
for step in "${STEPS[@]}"; do
  case $step in bench_*) variants+=("${step#bench_}");; esac
done
python3 scripts/bench_variants.py --config "${BENCH_CONFIG:-config/bench_sd3.yaml}" \
  --out-dir "$WORK/configs" "${variants[@]}" vggflow || exit 1

if [ -z "${BENCH_CONFIG:-}" ] && [ ! -f resources/sd3-random/pipeline/model_index.json ]; then
  echo "[$(elapsed) s] writing SD3-medium-shaped random weights (drawn on the GPU, else the CPU)"
  for device in cuda cpu; do
    python3 -m vggflow make-random-sd3 --shape medium --rewards aesthetic --device $device \
      --out-dir resources/sd3-random >> "$WORK/make_random_sd3.log" 2>&1 && break
    [ $device = cpu ] && { tail -5 "$WORK/make_random_sd3.log"; exit 1; }
    echo "[$(elapsed) s] drawing on $device failed; drawing on the CPU (about a minute)"
  done
  echo "[$(elapsed) s] random weights written"
fi

run_step() {  # name, minimum seconds, command...
  local name=$1 need=$2; shift 2
  local left=$(( DEADLINE - $(elapsed) ))
  if [ "$left" -lt "$need" ]; then echo "[$(elapsed) s] skipping $name: ${left} s left"; return; fi
  echo "[$(elapsed) s] $name (limit ${left} s)"
  timeout "$left" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  echo "[$(elapsed) s] $name exit $rc$([ $rc = 124 ] && echo ' (deadline)')"
  grep -v "Loading\|should be kept\|not expected\|Warning\|warn(" "$WORK/$name.log" | tail -12
  pack
}

for step in "${STEPS[@]}"; do
  case $step in
    bench_*compiled*)  # an untimed update first: compilation (and recompiles) happen there
      run_step "$step" 200 python3 -m vggflow bench --configs "$WORK/configs/${step#bench_}.yaml" \
        --updates 1 --warmup 1 --out "$WORK/update_cost_${step#bench_}.csv" \
        --regions-out "$WORK/update_regions_${step#bench_}.csv" ;;
    bench_*)
      run_step "$step" 150 python3 -m vggflow bench --configs "$WORK/configs/${step#bench_}.yaml" \
        --updates 1 --warmup 0 --out "$WORK/update_cost_${step#bench_}.csv" \
        --regions-out "$WORK/update_regions_${step#bench_}.csv" ;;
    profile)
      run_step profile 100 python3 scripts/profile_sd3_forward.py --config "$WORK/configs/vggflow.yaml" \
        --out "$WORK/forward.csv" --compile --repeats 3 --profile-out "$WORK/kernels.txt" ;;
    profile_value)
      run_step profile_value 100 python3 scripts/profile_value_update.py \
        --config "$WORK/configs/vggflow.yaml" --out "$WORK/value_update.csv" \
        --chunks ${VALUE_CHUNKS:-8 20 40} --compile --profile-out "$WORK/kernels_value" ;;
    *) echo "unknown step $step (bench_<variant>, profile or profile_value)"; exit 2 ;;
  esac
done
python3 - "$WORK" <<'PY'
import glob, sys
import pandas as pd
files = sorted(glob.glob(f"{sys.argv[1]}/update_cost_*.csv"))
if files:
    table = pd.concat([pd.read_csv(f).assign(file=f.rsplit("/", 1)[-1]) for f in files])
    columns = ["file", "seconds_per_update", "gflop_per_update", "mfu", "peak_memory_mb",
               "rollout_s", "prepare_s", "update_value_net_s", "update_lora_s"]
    print(table[columns].to_string(index=False))
for f in sorted(glob.glob(f"{sys.argv[1]}/update_regions_*.csv")):
    regions = pd.read_csv(f)
    print(f.rsplit("/", 1)[-1])
    print(regions[["path", "calls_per_update", "seconds_per_update", "gflop_per_update",
                   "mfu"]].to_string(index=False))
PY
echo "[$(elapsed) s] done: $OUT_DIR/bench.tar.gz"
