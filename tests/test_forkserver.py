"""``python -m vggflow.forkserver``: a served command behaves as ``python -m vggflow`` (outputs,
streams, exit status, signals) and writes the same bytes; the server is per environment and
exits when idle."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

from vggflow import forkserver as forkserver_module
from vggflow.config import write_yaml_atomic
from vggflow.train import INTERRUPTED_EXIT_CODE, STATE_FILE


@pytest.fixture
def env():
    """The environment of served commands: a private socket folder (short: a socket's path has
    at most 107 bytes), one thread; the server is stopped afterwards."""
    directory = tempfile.mkdtemp(prefix="vfs", dir="/tmp")
    environment = {**os.environ, "VGGFLOW_FORKSERVER_DIR": directory, "OMP_NUM_THREADS": "1",
                   "VGGFLOW_FORKSERVER_IDLE_S": "60"}
    yield environment
    server = ping(environment)
    if server:
        os.kill(server[0], signal.SIGTERM)
    shutil.rmtree(directory, ignore_errors=True)


def forkserver(*args: str, env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vggflow.forkserver", *args], env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


def ping(env: dict) -> tuple[int, int] | None:
    """(pid, commands served) of the server of ``env``, or None."""
    result = forkserver("--ping", env=env)
    found = re.match(r"pid (\d+) served (\d+) ", result.stdout)
    assert (result.returncode == 0) == bool(found), result.stdout + result.stderr
    return (int(found.group(1)), int(found.group(2))) if found else None


def wait_for_server(env: dict, timeout: float = 120.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while (server := ping(env)) is None:
        assert time.monotonic() < deadline, "no server started"
        time.sleep(0.5)
    return server


def train_command(cfg: Path, base: Path, root: Path) -> list[str]:
    return ["train", "--config", str(cfg), "--state-dir", str(root / "state"), "--threads", "1",
            "--lora-dir", str(root / "lora"), "--log-csv", str(root / "log.csv"), "--samples",
            str(root / "samples.pt"), "--base-samples", str(base), "--metrics",
            str(root / "metrics.csv")]


@pytest.fixture
def run_files(make_run_config, tmp_path):
    """A VGG-Flow run config (4 updates) and the base model's samples it is scored against."""
    write_yaml_atomic(make_run_config(method_name="vggflow"), tmp_path / "c.yaml")
    base = tmp_path / "base.pt"
    made = run_cli("sample-base", "--config", str(tmp_path / "c.yaml"), "--out", str(base))
    assert made.returncode == 0, made.stderr
    return tmp_path / "c.yaml", base


def test_served_runs_write_what_direct_runs_write(env, run_files, tmp_path):
    cfg, base = run_files
    assert ping(env) is None
    direct = run_cli(*train_command(cfg, base, tmp_path / "direct"))
    assert direct.returncode == 0, direct.stderr
    first = forkserver(*train_command(cfg, base, tmp_path / "first"), env=env)  # starts one
    assert first.returncode == 0, first.stderr
    pid, served = wait_for_server(env)
    result = forkserver(*train_command(cfg, base, tmp_path / "served"), env=env)
    assert result.returncode == 0, result.stderr
    assert ping(env) == (pid, served + 1)  # this one was served
    assert "done: 4 updates" in result.stdout  # the caller's streams
    for name in ("first", "served"):
        root = tmp_path / name
        for path in sorted((tmp_path / "direct").rglob("*")):
            if path.is_file() and "state" not in path.parts and path.suffix != ".csv":
                assert path.read_bytes() == (root / path.relative_to(tmp_path / "direct")
                                             ).read_bytes(), path
        assert (root / "metrics.csv").read_bytes() == (tmp_path / "direct/metrics.csv"
                                                       ).read_bytes()
        measured = ["elapsed_s", "peak_memory_mb"]
        pd.testing.assert_frame_equal(pd.read_csv(root / "log.csv").drop(columns=measured),
                                      pd.read_csv(tmp_path / "direct/log.csv").drop(
                                          columns=measured))
    # another environment (threads read when torch is imported) has no server yet
    assert ping({**env, "OMP_NUM_THREADS": "2"}) is None
    # inside a SLURM job the command runs in the job's own process, confined to its allocation
    in_job = forkserver(*train_command(cfg, base, tmp_path / "slurm"), env={
        **env, "SLURM_JOB_ID": "1"})
    assert in_job.returncode == 0 and ping(env) == (pid, served + 1), in_job.stderr
    assert (tmp_path / "slurm/samples.pt").read_bytes() == (tmp_path / "direct/samples.pt"
                                                           ).read_bytes()


def test_exit_status_streams_and_signals_reach_the_caller(env, make_run_config, run_files,
                                                          tmp_path):
    cfg, base = run_files
    forkserver("--help", env=env)  # starts the server
    wait_for_server(env)
    wrong = ["train", "--config", str(tmp_path / "missing.yaml"), "--state-dir", str(tmp_path)]
    served, direct = forkserver(*wrong, env=env), run_cli(*wrong)
    assert served.returncode == direct.returncode != 0
    assert served.stderr.splitlines()[-1] == direct.stderr.splitlines()[-1]
    assert ping(env)[1] == 1  # --help ran in the caller, which started the server

    write_yaml_atomic(make_run_config(method_name="refl", train={"max_steps": 100_000}),
                      tmp_path / "long.yaml")
    for stop in ("SIGINT to the caller", "the caller killed"):
        root = tmp_path / stop.replace(" ", "_")
        root.mkdir()
        with open(root / "out", "w") as out, open(root / "err", "w") as err:
            caller = subprocess.Popen(
                [sys.executable, "-m", "vggflow.forkserver",
                 *train_command(tmp_path / "long.yaml", base, root)],
                env=env, stdout=out, stderr=err)
            deadline = time.monotonic() + 120
            while "update 3/" not in (root / "out").read_text():
                assert caller.poll() is None and time.monotonic() < deadline, \
                    (root / "err").read_text()
                time.sleep(0.2)
            if stop == "SIGINT to the caller":
                caller.send_signal(signal.SIGINT)
                assert caller.wait(timeout=120) == INTERRUPTED_EXIT_CODE
            else:
                caller.kill()
                caller.wait(timeout=10)
                deadline = time.monotonic() + 120
                while "stopped after update" not in (root / "err").read_text():
                    assert time.monotonic() < deadline, (root / "err").read_text()
                    time.sleep(0.2)
        assert "stopped after update" in (root / "err").read_text()
        assert (root / "state" / STATE_FILE).exists()  # the trainer saved before it stopped


def test_an_idle_server_exits_and_removes_its_socket(env):
    env = {**env, "VGGFLOW_FORKSERVER_IDLE_S": "2"}
    forkserver("--help", env=env)
    wait_for_server(env)
    deadline = time.monotonic() + 30
    while ping(env) is not None:
        assert time.monotonic() < deadline, "the server did not exit"
        time.sleep(0.5)
    assert not list(Path(env["VGGFLOW_FORKSERVER_DIR"]).glob("*.sock"))


def test_a_server_serves_only_callers_with_its_cpus_and_installed_torch(monkeypatch, tmp_path):
    key = forkserver_module._server_key()
    assert forkserver_module._server_key() == key
    with monkeypatch.context() as patch:  # e.g. `taskset -c 1 snakemake ...`
        patch.setattr(os, "sched_getaffinity", lambda pid: {99})
        assert forkserver_module._server_key() != key
    fake_torch = tmp_path / "torch" / "__init__.py"
    fake_torch.parent.mkdir()
    fake_torch.write_text("")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: importlib.machinery.ModuleSpec(
        name, None, origin=str(fake_torch)))
    installed = forkserver_module._server_key()
    assert installed != key
    os.utime(fake_torch, ns=(0, 10**18))  # torch reinstalled while its server waits
    assert forkserver_module._server_key() != installed


def test_other_systems_than_linux_run_the_command_in_its_own_process(monkeypatch):
    class RanHere(Exception):
        pass

    def run_here(argv):
        raise RanHere(argv)

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(forkserver_module, "_run_here", run_here)
    monkeypatch.setattr(forkserver_module, "_connect", lambda path: pytest.fail("connected"))
    with pytest.raises(RanHere, match="--help"):
        forkserver_module.run(["--help"])
