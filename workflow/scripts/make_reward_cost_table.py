import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.tables import reward_cost_table, write_reward_cost_table

table = reward_cost_table(pd.read_csv(snakemake.input.metrics), pd.read_csv(snakemake.input.times))
write_reward_cost_table(table, snakemake.output.csv, snakemake.output.markdown)
