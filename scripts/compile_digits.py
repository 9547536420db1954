"""Does torch.compile pay on the digits suite? Compile time and seconds per update of each method's
run config with the flow network eager and compiled (torch.compile, inductor), side by side.

Each measurement runs in a fresh process with its own empty inductor cache (a cold compile, as in
a fresh `train` job): 3 untimed updates (they include the compilation), then 20 timed ones, one
thread. Writes one CSV row per (method, mode) to --out.

    python scripts/compile_digits.py --out results/bench/compile_digits.csv \
        --configs results/runs/margin/{refl,vggflow,adjoint_matching}/seed0/config.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import pandas as pd

WARMUP, TIMED = 3, 20


def measure(config: str, compiled: bool) -> dict:
    """One measurement, in this process."""
    import torch

    from vggflow.config import RunConfig
    from vggflow.train import Trainer

    cfg = RunConfig.load(config)
    with tempfile.TemporaryDirectory() as state:
        trainer = Trainer(cfg, state, threads=1)
        if compiled:  # the model's velocities call the compiled network (same parameters)
            trainer.model.net = torch.compile(trainer.model.net)
        start = time.perf_counter()
        for _ in range(WARMUP):
            trainer.update()
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        rows = [trainer.update() for _ in range(TIMED)]
        seconds = (time.perf_counter() - start) / TIMED
    return {"method": cfg.method["name"], "mode": "compiled" if compiled else "eager",
            "first_updates_s": warmup_s, "seconds_per_update": seconds,
            "reward_mean_last": rows[-1]["reward_mean"], "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", required=True, help="digits run configs")
    parser.add_argument("--out", required=True, help="output CSV")
    args = parser.parse_args()
    rows = []
    for config in args.configs:
        for mode in ("eager", "compiled"):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                code = ("import json, sys; sys.path.insert(0, 'scripts'); "
                        "from compile_digits import measure; "
                        f"print(json.dumps(measure({config!r}, {mode == 'compiled'})))")
                done = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                      capture_output=True, text=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{row['method']} {row['mode']}: first {WARMUP} updates "
                  f"{row['first_updates_s']:.2f} s, then {row['seconds_per_update']:.4f} s/update",
                  flush=True)
            rows.append(row)
    pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
