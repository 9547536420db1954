import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from vggflow.analysis.tables import budget_steps, paper_table, write_paper_tables

CAPTIONS = {
    "last": "at each run's last update",
    "updates": "at a matched number of updates (the fewest any method reached)",
    "gpu_hours": "at matched training time (the cheapest method's total; GPU-hours on GPUs)",
}
metrics, times = (pd.read_csv(path) for path in (snakemake.input.metrics, snakemake.input.times))
budget = snakemake.wildcards.budget
table = paper_table(metrics, budget_steps(metrics, times, budget))
config = snakemake.config
write_paper_tables(table, snakemake.output.csv, snakemake.output.markdown, snakemake.output.latex,
                   caption=f"Reward, diversity and prior preservation (mean ± std over seeds) "
                           f"{CAPTIONS[budget]}",
                   reference=snakemake.params.reference,
                   images_per_prompt=config["eval"]["images_per_prompt"])
