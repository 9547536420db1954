#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) with the pinned versions of
# pyproject.toml. Re-installs only when pyproject.toml changed. Usage: source or run it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.installed-$(sha256sum "$repo/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    start=$(date +%s)
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -c 'import sys; assert sys.version_info >= (3, 10), "vggflow needs Python >= 3.10"'
        echo "setup: creating $venv"
        "$python" -m venv "$venv"
    fi
    echo "setup: installing pinned dependencies (torch is large; a few minutes on first run)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$repo[dev]"
    rm -f "$venv"/.installed-*
    touch "$stamp"
    echo "setup: done in $(( $(date +%s) - start )) s"
fi
