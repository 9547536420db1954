#!/usr/bin/env bash
# The default benchmark (digits suite, CPU): set-up, every run, tables, figures and the report.
# Extra arguments go to snakemake (e.g. --cores 4, or a target such as `figures`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
export PATH="$repo/.venv/bin:$PATH" HF_HUB_OFFLINE=1
cd "$repo"
start=$(date +%s)
# the report in the same Snakemake process: a second one would parse the workflow again
snakemake --report results/report.html --report-after-run "$@"
echo "benchmark: finished in $(( $(date +%s) - start )) s;" \
     "see results/tables/, results/figures/ and results/report.html"
