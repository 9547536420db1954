"""Data parallelism (vggflow.distributed): two CPU processes over gloo, launched as the workflow
launches them (``accelerate launch --multi_gpu``), train exactly what one process trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from vggflow.config import write_yaml_atomic
from vggflow.distributed import micro_batch_generator

ACCELERATE = Path(sys.executable).parent / "accelerate"
# two micro-batches of 4 per update: one per process when there are two
TRAIN = {"max_steps": 3, "effective_batch_size": 8, "micro_batch_size": 4, "eval_every": 3,
         "checkpoint_every": 3}


def train(config: Path, root: Path, processes: int) -> subprocess.CompletedProcess:
    command = ["-m", "vggflow", "train", "--config", str(config), "--state-dir",
               str(root / "state"), "--lora-dir", str(root / "lora"), "--log-csv",
               str(root / "log.csv"), "--samples", str(root / "samples.pt"), "--threads", "1"]
    if processes > 1:
        command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "0", *command]
    else:
        command = [sys.executable, *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("method", ["vggflow", "refl"])
def test_two_processes_train_what_one_process_trains(make_run_config, tmp_path, method):
    """Same micro-batches, gradients summed over processes, VGG-Flow's clipping quantile over
    all samples: the LoRA and the log equal the single-process run's, bit for bit."""
    from safetensors.torch import load_file

    config = tmp_path / "config.yaml"
    write_yaml_atomic(make_run_config(method_name=method, train=TRAIN), config)
    runs = {}
    for processes in (1, 2):
        result = train(config, tmp_path / f"p{processes}", processes)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        runs[processes] = tmp_path / f"p{processes}"
    assert "process 2 of 2" in result.stdout
    logs = [pd.read_csv(runs[p] / "log.csv") for p in (1, 2)]
    assert [set(log["processes"]) for log in logs] == [{1}, {2}]  # GPU-hours count them
    logs = [log.drop(columns=["elapsed_s", "peak_memory_mb", "processes"]) for log in logs]
    pd.testing.assert_frame_equal(logs[0], logs[1], check_exact=True)
    if method == "vggflow":
        assert "reward_grad_threshold" in logs[0]
    for step in (0, 3):
        weights = [load_file(runs[p] / f"lora/step{step}/adapter_model.safetensors")
                   for p in (1, 2)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    samples = [torch.load(runs[p] / "samples.pt", weights_only=False)["images"] for p in (1, 2)]
    assert torch.equal(samples[0], samples[1])


def test_micro_batches_that_do_not_split_over_the_processes_fail_clearly(make_run_config,
                                                                        tmp_path):
    config = tmp_path / "config.yaml"
    write_yaml_atomic(make_run_config(train={**TRAIN, "effective_batch_size": 12}), config)
    result = train(config, tmp_path, processes=2)
    assert result.returncode != 0
    assert "3 micro-batches per update" in result.stderr and "cannot be split over 2" in \
        result.stderr


def test_every_micro_batch_has_its_own_noise():
    draws = {(step, index): torch.randn(4, generator=micro_batch_generator(0, step, index))
             for step in range(3) for index in range(4)}
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])
    again = torch.randn(4, generator=micro_batch_generator(0, 2, 1))
    assert torch.equal(again, draws[(2, 1)])  # a pure function of (seed, step, micro-batch)


def test_the_train_rule_launches_one_process_per_gpu_of_its_resources():
    from test_workflow import snakemake

    def command(*extra: str) -> str:
        result = snakemake("-n", "-p", "--directory", ".test", "--forcerun", "train",
                           "--cores", "1", *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        return next(line for line in result.stdout.splitlines()
                    if " train --config " in line)

    # one process: through the fork server, as .test/config/config.yaml asks (forkserver: true)
    assert command().split("Shell command: ")[-1].startswith(
        "python -m vggflow.forkserver train --config")
    assert "accelerate launch --multi_gpu --num_processes 4 --num_machines 1" in command(
        "--set-resources", "train:gpu=4")
    assert "--num_processes 2 " in command("--set-resources", "train:gres='gpu:a100:2'")
