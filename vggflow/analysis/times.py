"""Training wall time at every update, from the runs' training logs (for wall-clock plots and
compute-matched tables)."""

from __future__ import annotations

import pandas as pd


def training_times(logs: list[pd.DataFrame], runs: list[dict]) -> pd.DataFrame:
    """Columns reward, method, seed, step, elapsed_s, processes: training seconds up to each
    update (evaluation sampling excluded), with step 0 at 0 s, and the run's processes (GPUs;
    1 for logs without the column). ``runs[i]`` names ``logs[i]``'s run."""
    if len(logs) != len(runs):
        raise ValueError(f"{len(logs)} training logs for {len(runs)} runs")
    frames = []
    for log, run in zip(logs, runs):
        steps = pd.concat([pd.DataFrame({"step": [0], "elapsed_s": [0.0]}),
                           log[["step", "elapsed_s"]]], ignore_index=True)
        frames.append(steps.assign(reward=run["reward"], method=run["method"],
                                   seed=run["seed"], processes=run_processes(log)))
    return pd.concat(frames, ignore_index=True)[["reward", "method", "seed", "step",
                                                  "elapsed_s", "processes"]]


def run_processes(log: pd.DataFrame) -> int:
    """A training log's processes (one per GPU; the ``processes`` column, else 1)."""
    return int(log["processes"].iloc[-1]) if "processes" in log else 1
