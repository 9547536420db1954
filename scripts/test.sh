#!/usr/bin/env bash
# The tests: set-up, style checks, then pytest (unit tests, snakemake --lint, dry runs and a
# real run of the .test/ config). Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
export PATH="$repo/.venv/bin:$PATH" HF_HUB_OFFLINE=1
cd "$repo"
ruff check vggflow tests workflow/scripts
snakefmt --check Snakefile workflow/
python -m pytest "$@"
