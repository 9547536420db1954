"""Training wall time at every update, from the runs' training logs (for wall-clock plots and
compute-matched tables)."""

from __future__ import annotations

import pandas as pd


def training_times(logs: list[pd.DataFrame], runs: list[dict]) -> pd.DataFrame:
    """Columns reward, method, seed, step, elapsed_s: training seconds up to each update
    (evaluation sampling excluded), with step 0 at 0 s. ``runs[i]`` names ``logs[i]``'s run."""
    if len(logs) != len(runs):
        raise ValueError(f"{len(logs)} training logs for {len(runs)} runs")
    frames = []
    for log, run in zip(logs, runs):
        steps = pd.concat([pd.DataFrame({"step": [0], "elapsed_s": [0.0]}),
                           log[["step", "elapsed_s"]]], ignore_index=True)
        frames.append(steps.assign(reward=run["reward"], method=run["method"],
                                   seed=run["seed"]))
    return pd.concat(frames, ignore_index=True)[["reward", "method", "seed", "step",
                                                  "elapsed_s"]]
