"""The workflow through a live SLURM cluster (`scripts/slurm/up.sh`), with the shipped profile.

Required in CI: with CI=true a missing cluster is a failure, not a skip. Snakemake runs under
`timeout -s INT`, which cancels its SLURM jobs, so a hang fails the test instead of the CI limit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

# The shipped profile's resources are sized for SD3 on real GPU nodes; on the 2-CPU test node every
# job gets one CPU and a little memory, and GPU rules still ask for one (fake) GPU.
SMALL_RESOURCES = [
    "--default-resources", "mem_mb=800", "runtime=30", "cpus_per_task=1",
    "--set-resources", *(f"{rule}:{key}={value}" for rule in ("train", "sample_base", "metrics")
                         for key, value in (("gpu", 1), ("mem_mb", 1500), ("cpus_per_task", 1))),
]


def cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return states.returncode == 0 and any(
        state in states.stdout for state in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module")
def slurm_cluster():
    if not cluster_is_up():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no SLURM cluster is up; .ci/run starts one with "
                        "scripts/slurm/up.sh (see its output above)")
        pytest.skip("no SLURM cluster; start one with `sudo bash scripts/slurm/up.sh`")


def test_tiny_workflow_runs_through_the_slurm_profile(slurm_cluster, tmp_path):
    command = ["timeout", "-s", "INT", "-k", "30", "1200", sys.executable, "-m", "snakemake",
               "--profile", str(REPO / "profiles/slurm"), "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(tmp_path), "--configfile", str(REPO / ".test/config/config.yaml"),
               "--slurm-init-seconds-before-status-checks", "5",
               "--seconds-between-status-checks", "5", "--slurm-keep-successful-logs",
               *SMALL_RESOURCES]
    # jobs inherit the environment: the venv's python and package (`python -m vggflow`)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=1300, env=env)
    output = result.stdout[-6000:] + result.stderr[-6000:]
    assert result.returncode == 0, output
    table = pd.read_csv(tmp_path / "results/tables/summary.csv")
    assert {"base", "vggflow", "refl"} <= set(table["method"])
    train_logs = list((tmp_path / ".snakemake/slurm_logs/rule_train").glob("**/*.log"))
    assert train_logs, "no SLURM job log of the train rule: did the jobs run through SLURM?"
