import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.sweep import describe_rule, settings_table, write_winners

limits = dict(snakemake.params.limits)
table = settings_table(pd.read_csv(snakemake.input[0]), **limits)
write_winners(table, describe_rule(**limits), snakemake.output.settings,
              snakemake.output.markdown, snakemake.output.overrides)
