import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

import torch

from vggflow.analysis.figures import sample_evolution
from vggflow.analysis.style import label

out = Path(snakemake.output[0])
out.mkdir(parents=True, exist_ok=True)
for method, path in zip(snakemake.params.methods, snakemake.input):
    samples = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    images = samples["images"].shape[2]
    sample_evolution(samples, out / f"{method}.png", image_indices=tuple(range(min(4, images))),
                     title=f"{label(method)} on {snakemake.wildcards.reward}: "
                           f"{samples['prompts'][0]!r}")
