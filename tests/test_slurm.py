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
import torch
import yaml
from conftest import REPO

# The shipped profile's resources are sized for SD3 on real GPU nodes; on the 2-CPU test node every
# job gets one CPU and a little memory, and GPU rules still ask for one (fake) GPU.
SMALL_RESOURCES = [
    "--default-resources", "mem_mb=800", "runtime=30", "cpus_per_task=1",
    "--set-resources", *(f"{rule}:{key}={value}" for rule in ("train", "sample_base")
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


def run_on_slurm(workdir: Path, *targets: str, options: tuple[str, ...] = (),
                 limit: int = 1200) -> subprocess.CompletedProcess:
    """snakemake with the shipped SLURM profile on the .test config, small resources, fast polls.

    ``options`` come last, so that they replace the small default or per-rule resources.
    """
    command = ["timeout", "-s", "INT", "-k", "30", str(limit), sys.executable, "-m", "snakemake",
               "--profile", str(REPO / "profiles/slurm"), "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), *targets, "--configfile",
               str(REPO / ".test/config/config.yaml"),
               "--slurm-init-seconds-before-status-checks", "5",
               "--seconds-between-status-checks", "5", "--slurm-keep-successful-logs",
               *SMALL_RESOURCES, *options]
    # jobs inherit the environment: the venv's python and package (`python -m vggflow`)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, timeout=limit + 60, env=env)


@pytest.fixture(scope="module")
def slurm_workdir(slurm_cluster, tmp_path_factory):
    """The tiny workflow, run to its tables and figures through SLURM once for this module."""
    workdir = tmp_path_factory.mktemp("slurm")
    result = run_on_slurm(workdir)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    return workdir


def test_tiny_workflow_runs_through_the_slurm_profile(slurm_workdir):
    table = pd.read_csv(slurm_workdir / "results/tables/summary.csv")
    assert {"base", "vggflow", "refl"} <= set(table["method"])
    assert (slurm_workdir / "results/figures/convergence_margin.png").exists()
    train_logs = list((slurm_workdir / ".snakemake/slurm_logs/rule_train").glob("**/*.log"))
    assert train_logs, "no SLURM job log of the train rule: did the jobs run through SLURM?"
    assert all(log.stem.isdigit() for log in train_logs)  # named by SLURM job id


def test_a_partition_that_does_not_exist_fails_with_sbatchs_error(slurm_workdir):
    result = run_on_slurm(slurm_workdir, "results/runs/margin/refl/seed3/train_log.csv",
                          options=("--default-resources", "slurm_partition=no_such_partition",
                                   "mem_mb=800", "runtime=30", "cpus_per_task=1"), limit=300)
    assert result.returncode != 0
    assert "invalid partition" in (result.stdout + result.stderr).lower()


# Seconds of training the cut job needs on this host: more than one attempt gets (SLURM enforces
# the 1-minute limit lazily: attempts end every 120-150 s, with 40-100 s of training each), little
# enough that nine attempts finish it even if the job runs at half the calibrated speed.
CUT_JOB_TRAINING_S = 180


def updates_for_seconds(workdir: Path, tmp_path: Path, seconds: float) -> int:
    """How many digits ReFL updates (a multiple of 1000, at least 3000) take ``seconds`` of
    training on this host: 500 updates of the fixture's resolved run, timed by its training log
    (update time only, as the trainer counts it). A fixed count does not fit every host: 12000
    updates took 150-250 s on one CI machine and did not finish in nine one-minute attempts
    on another."""
    config = yaml.safe_load((workdir / "results/runs/margin/refl/seed0/config.yaml").read_text())
    config["train"].update(max_steps=500, eval_every=500, checkpoint_every=500, log_every=500)
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    (calibration / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "vggflow", "train", "--config",
               str(calibration / "config.yaml"), "--threads", "1", *(
                   f"--{name}={calibration / name}" for name in (
                       "state-dir", "lora-dir", "log-csv", "samples"))]
    timed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=workdir)
    assert timed.returncode == 0, timed.stderr[-4000:]
    seconds_per_update = pd.read_csv(calibration / "log-csv")["elapsed_s"].iloc[-1] / 500
    return max(3000, 1000 * round(seconds / seconds_per_update / 1000))


def test_a_job_cut_by_its_time_limit_is_retried_and_resumes_to_the_same_result(slurm_workdir,
                                                                              tmp_path):
    """One training job with more work than its one-minute SLURM limit: SLURM ends it (SIGTERM:
    the trainer saves its state), the profile's retry resumes it, and the result equals the same
    run trained straight through here."""
    from safetensors.torch import load_file

    updates = updates_for_seconds(slurm_workdir, tmp_path, CUT_JOB_TRAINING_S)
    long_run = tmp_path / "long_run.yaml"
    long_run.write_text(yaml.safe_dump({"train": {
        "max_steps": updates, "eval_every": updates, "checkpoint_every": 1000,
        "log_every": 1000}}))
    run = Path("results/runs/margin/refl/seed7")
    result = run_on_slurm(slurm_workdir, str(run / "train_log.csv"), options=(
        "--configfile", str(REPO / ".test/config/config.yaml"), str(long_run),
        # no early warning signal (slurm_extra), and a limit shorter than the work; more retries
        # than the profile's 2, so that a job slower than calibrated still finishes
        "--set-resources", "train:gpu=1", "train:mem_mb=1500", "train:cpus_per_task=1",
        "train:runtime=1", "--retries", "8"), limit=1800)
    assert result.returncode == 0, (f"{updates} updates (calibrated to {CUT_JOB_TRAINING_S} s)\n"
                                    + result.stdout[-6000:] + result.stderr[-6000:])
    job_logs = list((slurm_workdir / ".snakemake/slurm_logs/rule_train/margin_refl_7").glob(
        "*.log"))  # one log per SLURM job, named by its id
    assert len(job_logs) >= 2, f"the job was not cut by its time limit: {job_logs}"
    assert any("DUE TO TIME LIMIT" in log.read_text() for log in job_logs)
    train_log = (slurm_workdir / "logs/train/margin/refl/seed7.log").read_text()
    # the last attempt continued from a saved state, or (when SLURM reported TIMEOUT for an
    # attempt that had finished) published that attempt's kept outputs again
    assert "resumed from" in train_log or "published again" in train_log

    straight = tmp_path / "straight"
    command = [sys.executable, "-m", "vggflow", "train", "--config",
               str(slurm_workdir / run / "config.yaml"), "--state-dir", str(straight / "state"),
               "--lora-dir", str(straight / "lora"), "--log-csv", str(straight / "log.csv"),
               "--samples", str(straight / "samples.pt"), "--threads", "1"]
    uninterrupted = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                                   cwd=slurm_workdir)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-4000:]
    weights = [load_file(root / f"lora/step{updates}/adapter_model.safetensors")
               for root in (straight, slurm_workdir / run)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    logs = [pd.read_csv(path) for path in (straight / "log.csv", slurm_workdir / run /
                                           "train_log.csv")]
    assert logs[0]["reward_mean"].tolist() == logs[1]["reward_mean"].tolist()
