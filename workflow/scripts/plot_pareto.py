import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.figures import pareto

pareto(pd.read_csv(snakemake.input[0]), snakemake.wildcards.reward, snakemake.output.png)
