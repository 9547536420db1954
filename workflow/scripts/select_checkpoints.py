import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.selection import select_checkpoints

selected = select_checkpoints(pd.read_csv(snakemake.input[0]),
                              snakemake.params.min_diversity_ratio, snakemake.params.max_fd_prior)
selected.to_csv(snakemake.output[0], index=False)
