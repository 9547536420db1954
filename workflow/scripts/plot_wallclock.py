import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.figures import convergence_wallclock

metrics, times = (pd.read_csv(path) for path in (snakemake.input.metrics, snakemake.input.times))
convergence_wallclock(metrics, times, snakemake.wildcards.reward, snakemake.output.png)
