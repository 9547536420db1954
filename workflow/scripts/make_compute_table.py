import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import json
from pathlib import Path

import pandas as pd

from vggflow.analysis.tables import compute_table, write_compute_table

logs = [pd.read_csv(path) for path in snakemake.input.logs]
# each train job's benchmark table (host wall time), where Snakemake wrote one
benchmarks = [pd.read_csv(path, sep="\t") if Path(path).exists() else None
              for path in snakemake.params.benchmarks]
# each train job's own peak memory: Snakemake's benchmark measures the job's process tree, which
# a job run through the fork server (config `forkserver`) is not in
peak_rss = [json.loads(Path(path).read_text()).get("host_peak_rss_mb")
            for path in snakemake.input.provenance]
table = compute_table(logs, snakemake.params.runs, benchmarks=benchmarks, job_peak_rss_mb=peak_rss)
write_compute_table(table, snakemake.output.csv, snakemake.output.markdown)
