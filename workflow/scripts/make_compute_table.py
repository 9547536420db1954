import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

import pandas as pd

from vggflow.analysis.tables import compute_table, write_compute_table

logs = [pd.read_csv(path) for path in snakemake.input]
# each train job's benchmark table (host wall time and memory), where Snakemake wrote one
benchmarks = [pd.read_csv(path, sep="\t") if Path(path).exists() else None
              for path in snakemake.params.benchmarks]
table = compute_table(logs, snakemake.params.runs, benchmarks=benchmarks)
write_compute_table(table, snakemake.output.csv, snakemake.output.markdown)
