#!/bin/bash
# GPU benchmark at SD3-medium scale (random weights): the new VGG-Flow update, the forward
# profile (LoRA variants, compiled blocks), then the other methods; results re-tarred after each.
START=$(date +%s); DEADLINE=${DEADLINE:-560}
elapsed() { echo $(( $(date +%s) - START )); }
W=/tmp/work; mkdir -p $W
pack() { tar -C $W -czf $OUT/bench.tar.gz . ; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())" || exit 1
echo "[$(elapsed) s] writing SD3-medium-shaped random weights"
python3 -m vggflow make-random-sd3 --shape medium --rewards aesthetic --out-dir resources/sd3-random 2>&1 | grep -v "shards\|cannot be saved\|should be kept" || exit 1
echo "[$(elapsed) s] files written"
step() {  # name, minimum seconds, command...
  local name=$1 need=$2; shift 2
  local left=$(( DEADLINE - $(elapsed) ))
  if [ $left -lt $need ]; then echo "[$(elapsed) s] skipping $name: ${left} s left"; return; fi
  echo "[$(elapsed) s] $name (limit ${left} s)"
  timeout $left "$@" > $W/$name.log 2>&1
  echo "[$(elapsed) s] $name exit $?"; grep -v "Loading weights\|should be kept\|not expected\|Warning\|warn(" $W/$name.log | tail -12
  pack
}
bench() { step bench_$1 $2 python3 -m vggflow bench --configs .devbench/configs/$1.yaml --updates 1 --warmup 0 --out $W/update_cost_$1.csv; }
bench vggflow_tf32 80
step profile_forward 60 python3 scripts/profile_sd3_forward.py --config .devbench/configs/vggflow_tf32.yaml --out $W/forward_512_compiled.csv --compile --repeats 3
bench adjoint_matching_tf32 120
python3 - <<'PY'
import glob, pandas as pd
files = sorted(glob.glob("/tmp/work/update_cost_*.csv"))
if files:
    t = pd.concat([pd.read_csv(f) for f in files])
    cols = ["method", "seconds_per_update", "gflop_per_update", "mfu", "matmul_tflops", "peak_memory_mb",
            "rollout_s", "reward_s", "prepare_s", "update_value_net_s", "update_lora_s", "build_s"]
    print(t[cols].to_string(index=False))
PY
echo "[$(elapsed) s] done"; pack
