import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd
import torch

from vggflow.analysis.figures import method_grid

reward = snakemake.wildcards.reward
seed = snakemake.params.seed
samples = {method: torch.load(path, map_location="cpu", weights_only=False, mmap=True)
           for method, path in zip(snakemake.params.methods, snakemake.input.samples)}
selected = pd.read_csv(snakemake.input.selected)
selected = selected[(selected["reward"] == reward) & (selected["seed"] == seed)]
steps = {"base": 0, **dict(zip(selected["method"], selected["step"].astype(int)))}
metrics = pd.read_csv(snakemake.input.metrics)
trained = metrics[(metrics["reward"] == reward) & (metrics["seed"] == seed)
                  & (metrics["metric"] == f"reward_{reward}")]
rewards = {"base": float(trained[trained["step"] == 0]["value"].iloc[0])}
for method, step in steps.items():
    if method != "base":
        row = trained[(trained["method"] == method) & (trained["step"] == step)]
        rewards[method] = float(row["value"].iloc[0])
images = next(iter(samples.values()))["images"].shape[2]  # (steps, prompts, n, C, H, W)
method_grid(samples, steps, rewards, snakemake.output.png,
            images_per_prompt=min(4, images), title=f"Trained on {reward} (seed {seed})")
