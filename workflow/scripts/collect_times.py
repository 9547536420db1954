import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.times import training_times

logs = [pd.read_csv(path) for path in snakemake.input]
training_times(logs, snakemake.params.runs).to_csv(snakemake.output[0], index=False)
