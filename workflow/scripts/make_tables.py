import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.tables import write_tables

write_tables(pd.read_csv(snakemake.input[0]), snakemake.output.csv, snakemake.output.markdown)
