#!/bin/bash
# GPU benchmark at SD3-medium scale (random weights), every method in its own bench call.
START=$(date +%s); DEADLINE=${DEADLINE:-570}
elapsed() { echo $(( $(date +%s) - START )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())" || exit 1
echo "[$(elapsed) s] writing SD3-medium-shaped random weights"
python3 -m vggflow make-random-sd3 --shape medium --rewards aesthetic --out-dir resources/sd3-random 2>&1 | grep -v "shards\|cannot be saved\|should be kept" || exit 1
echo "[$(elapsed) s] files written"; du -sh resources/sd3-random
for m in ${METHODS:-vggflow adjoint_matching refl draft}; do
  left=$(( DEADLINE - $(elapsed) ))
  if [ $left -lt 40 ]; then echo "[$(elapsed) s] skipping $m: ${left} s left"; continue; fi
  echo "[$(elapsed) s] bench $m (limit ${left} s)"
  timeout $left python3 -m vggflow bench --configs .devbench/configs/$m.yaml --updates 1 --warmup 0 \
      --out $OUT/update_cost_$m.csv > $OUT/bench_$m.log 2>&1
  echo "[$(elapsed) s] $m exit $?"; grep -v "Loading weights\|should be kept\|not expected" $OUT/bench_$m.log | tail -4
done
python3 - <<'PY'
import glob, os, pandas as pd
files = sorted(glob.glob(os.environ["OUT"] + "/update_cost_*.csv"))
if files:
    t = pd.concat([pd.read_csv(f) for f in files])
    cols = ["method", "seconds_per_update", "gflop_per_update", "mfu", "matmul_tflops", "peak_memory_mb",
            "rollout_s", "reward_s", "prepare_s", "update_value_net_s", "update_lora_s", "build_s", "startup_s"]
    print(t[cols].to_string(index=False))
PY
echo "[$(elapsed) s] done"
