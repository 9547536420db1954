import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.tables import compute_table, write_compute_table

logs = [pd.read_csv(path) for path in snakemake.input]
table = compute_table(logs, snakemake.params.runs)
write_compute_table(table, snakemake.output.csv, snakemake.output.markdown)
