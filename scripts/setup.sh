#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) with the pinned versions of
# pyproject.toml. Re-installs only when pyproject.toml changed. Usage: source or run it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${PYTHON:-python3}"
need_gib="${VGGFLOW_SETUP_NEED_GIB:-8}"  # free disk a new .venv needs, GiB
stamp="$venv/.installed-$(sha256sum "$repo/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    start=$(date +%s)
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -c 'import sys; assert sys.version_info >= (3, 10), "vggflow needs Python >= 3.10"'
        # torch's CUDA build and its libraries take about 6 GiB: say so up front rather than
        # let pip die half-way with "No space left on device".
        free_kib=$(df -Pk "$repo" | awk 'NR == 2 { print $4 }')
        if [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
            echo "setup: only $((free_kib / 1024)) MiB free on the disk of $repo; a new .venv" \
                "needs about $need_gib GiB. Free some space (old clones, /tmp) and run this" \
                "again." >&2
            exit 1
        fi
        echo "setup: creating $venv"
        "$python" -m venv "$venv"
    fi
    echo "setup: installing pinned dependencies (torch is large; a few minutes on first run)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
        -e "$repo[dev]"
    rm -f "$venv"/.installed-*
    touch "$stamp"
    echo "setup: done in $(( $(date +%s) - start )) s"
fi
