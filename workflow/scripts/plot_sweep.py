import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.plots import sweep

sweep(pd.read_csv(snakemake.input[0]), snakemake.params.min_diversity_ratio, snakemake.output.png)
