import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.tables import collect_variants

frames = [pd.read_csv(path) for path in snakemake.input]
collect_variants(frames, snakemake.params.variants).to_csv(snakemake.output[0], index=False)
