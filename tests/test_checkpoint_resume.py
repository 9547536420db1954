"""A run stopped after k updates and resumed ends exactly where an uninterrupted run ends."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from vggflow.config import RunConfig, write_yaml_atomic
from vggflow.train import STATE_FILE, Interrupted, Outputs, Trainer


def final_parameters(trainer):
    return {f"{name}.{k}": v.detach().clone() for name, m in trainer.modules.items()
            for k, v in m.named_parameters() if v.requires_grad}


def publish(trainer, root):
    outputs = Outputs(root / "lora", root / "log.csv", root / "samples.pt")
    trainer.publish(outputs)
    return outputs


@pytest.mark.parametrize("method", ["vggflow", "refl"])
def test_stop_and_resume_equals_uninterrupted(make_run_config, tmp_path, method):
    cfg = RunConfig.from_mapping(make_run_config(method_name=method))
    straight = Trainer(cfg, tmp_path / "a" / "state", threads=1)
    straight.run()
    expected = final_parameters(straight)
    out_a = publish(straight, tmp_path / "a")

    first = Trainer(cfg, tmp_path / "b" / "state", threads=1)
    with pytest.raises(Interrupted):
        first.run(stop_after_steps=1)
    assert first.step == 1 and (tmp_path / "b" / "state" / STATE_FILE).exists()
    assert not (tmp_path / "b" / "log.csv").exists()  # nothing published before the end
    second = Trainer(cfg, tmp_path / "b" / "state", threads=1)
    second.run()
    assert second.step == cfg.train.max_steps
    got = final_parameters(second)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    out_b = publish(second, tmp_path / "b")
    log_a, log_b = pd.read_csv(out_a.log_csv), pd.read_csv(out_b.log_csv)
    assert log_a["step"].tolist() == log_b["step"].tolist() == list(range(1, 5))
    assert log_a["reward_mean"].tolist() == log_b["reward_mean"].tolist()
    samples_a = torch.load(out_a.samples, weights_only=False)
    samples_b = torch.load(out_b.samples, weights_only=False)
    assert samples_a["steps"] == [0, 2, 4]
    assert torch.equal(samples_a["images"], samples_b["images"])
    assert sorted(p.name for p in out_b.lora_dir.iterdir()) == ["step0", "step2", "step4"]


def test_state_of_another_config_is_set_aside(make_run_config, tmp_path):
    cfg = RunConfig.from_mapping(make_run_config(method_name="refl"))
    with pytest.raises(Interrupted):
        Trainer(cfg, tmp_path / "state", threads=1).run(stop_after_steps=1)
    other = RunConfig.from_mapping(make_run_config(method_name="refl", seed=5))
    trainer = Trainer(other, tmp_path / "state", threads=1)
    assert not trainer.try_resume()
    assert trainer.step == 0
    assert any(p.name.startswith("state.stale-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_saves_state_and_the_rerun_finishes(make_run_config, tmp_path,
                                                          stop_signal):
    # SIGINT: Ctrl-C; SIGTERM: scancel or a time limit; SIGUSR1: SLURM's warning before the
    # time limit (sbatch --signal)
    cfg = make_run_config(method_name="refl", train={"max_steps": 3000, "checkpoint_every": 1000,
                                                     "eval_every": 1000})
    config_path = tmp_path / "config.yaml"
    write_yaml_atomic(cfg, config_path)
    args = [sys.executable, "-m", "vggflow", "train", "--config", str(config_path), "--state-dir",
            str(tmp_path / "state"), "--lora-dir", str(tmp_path / "lora"), "--log-csv",
            str(tmp_path / "log.csv"), "--samples", str(tmp_path / "samples.pt"), "--threads", "1"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "state" / "train_log.csv"
    deadline = time.time() + 120
    while (not log.exists() or len(log.read_text().splitlines()) < 5) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, stop_signal)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    state = torch.load(tmp_path / "state" / STATE_FILE, weights_only=False)
    assert 5 <= state["step"] < 3000
    assert not (tmp_path / "log.csv").exists()
    # The same command continues from the saved update (3 more updates, then stop again).
    rerun = subprocess.run(args + ["--stop-after", "3"], capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 130
    resumed = f"resumed from {tmp_path / 'state' / STATE_FILE} at update {state['step']}"
    assert resumed in rerun.stdout
    rows = pd.read_csv(log)
    assert rows["step"].tolist() == list(range(1, state["step"] + 4))


def test_cli_publishes_outputs_and_a_retry_publishes_them_again(make_run_config, tmp_path):
    """A finished run keeps only hard links to its outputs in its state folder. A retry of the
    job (--attempt 2), after Snakemake deleted the outputs of a job reported failed, puts the
    same files back without training; a new job (attempt 1) trains from scratch. The job's
    metrics are the ones `vggflow metrics` computes from its samples."""
    from conftest import run_cli

    from vggflow.config import write_yaml_atomic as write

    write(make_run_config(method_name="refl", train={"max_steps": 2}), tmp_path / "c.yaml")
    base = tmp_path / "base" / "samples.pt"  # a run config holds every key of a base config
    made = run_cli("sample-base", "--config", str(tmp_path / "c.yaml"), "--out", str(base))
    assert made.returncode == 0, made.stderr
    outputs = {"lora_dir": tmp_path / "lora", "log_csv": tmp_path / "log.csv",
               "samples": tmp_path / "samples.pt", "provenance": tmp_path / "p.json",
               "metrics": tmp_path / "metrics.csv"}
    command = ["train", "--config", str(tmp_path / "c.yaml"), "--state-dir",
               str(tmp_path / "state"), "--threads", "1", "--lora-dir", str(outputs["lora_dir"]),
               "--log-csv", str(outputs["log_csv"]), "--samples", str(outputs["samples"]),
               "--provenance", str(outputs["provenance"]), "--base-samples", str(base),
               "--metrics", str(outputs["metrics"])]
    result = run_cli(*command)
    assert result.returncode == 0, result.stderr
    scored = run_cli("metrics", "--config", str(tmp_path / "c.yaml"), "--samples",
                     str(outputs["samples"]), "--base-samples", str(base), "--out",
                     str(tmp_path / "base" / "metrics.csv"))
    assert scored.returncode == 0, scored.stderr
    metrics = pd.read_csv(outputs["metrics"])
    assert sorted(set(metrics["step"])) == [0, 2] and "reward_margin" in set(metrics["metric"])
    assert (tmp_path / "base" / "metrics.csv").read_bytes() == outputs["metrics"].read_bytes()
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["published"]
    kept = tmp_path / "state" / "published"
    assert sorted(p.name for p in kept.iterdir()) == sorted(outputs)
    assert (kept / "samples").stat().st_ino == outputs["samples"].stat().st_ino  # a link
    assert (outputs["lora_dir"] / "step2").is_dir()
    assert len(pd.read_csv(outputs["log_csv"])) == 2

    def published_bytes() -> dict:
        return {path.relative_to(tmp_path): path.read_bytes() for path in tmp_path.rglob("*")
                if path.is_file() and "state" not in path.parts}

    published = published_bytes()

    for path in outputs.values():  # what Snakemake does to the outputs of a failed job
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    retry = run_cli(*command, "--attempt", "2")
    assert retry.returncode == 0, retry.stderr
    assert "published again" in retry.stdout and "done:" not in retry.stdout
    assert published_bytes() == published

    new_job = run_cli(*command)  # attempt 1, e.g. --forcerun
    assert new_job.returncode == 0, new_job.stderr
    assert "trains from scratch" in new_job.stdout and "done: 2 updates" in new_job.stdout
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["published"]

    alone = run_cli(*command[:command.index("--base-samples")], "--metrics", "m.csv")
    assert alone.returncode != 0 and "--metrics and --base-samples go together" in alone.stderr


@pytest.mark.parametrize("record", [False, True])
def test_a_non_finite_loss_fails_or_is_recorded(make_run_config, tmp_path, monkeypatch, record):
    import json

    from vggflow.cli import main
    from vggflow.methods.refl import ReFL

    loss = ReFL.loss

    def nan_from_update_4(self, module, batch, step):
        out = loss(self, module, batch, step)
        return {**out, "loss": out["loss"] * float("nan")} if step >= 3 else out

    monkeypatch.setattr(ReFL, "loss", nan_from_update_4)
    write_yaml_atomic(make_run_config(method_name="refl", train={"max_steps": 6}),
                      tmp_path / "c.yaml")
    out = {"lora": tmp_path / "lora", "log": tmp_path / "log.csv",
           "samples": tmp_path / "samples.pt", "prov": tmp_path / "p.json"}
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--state-dir", str(tmp_path / "state"),
            "--threads", "1", "--lora-dir", str(out["lora"]), "--log-csv", str(out["log"]),
            "--samples", str(out["samples"]), "--provenance", str(out["prov"])]
    code = main(argv + ["--record-divergence"] * record)
    if not record:  # the run fails, keeps its state, and publishes nothing
        assert code == 2
        assert (tmp_path / "state" / STATE_FILE).exists()
        assert not any(path.exists() for path in out.values())
        return
    assert code == 0
    assert json.loads(out["prov"].read_text())["diverged_after_update"] == 3
    assert torch.load(out["samples"], weights_only=False)["steps"] == [0, 2]
    assert len(pd.read_csv(out["log"])) == 3


# Runs the trainer CLI with the given arguments after patching it to send itself a signal right
# after computing update `at` (before that update is logged or its state saved).
SIGNAL_AT_UPDATE = """
import os, sys
from vggflow.cli import main
from vggflow.train import Trainer
at, signum = int(sys.argv[1]), int(sys.argv[2])
update = Trainer.update
def update_then_signal(self):
    row = update(self)  # update number self.step is done
    if self.step == at:
        os.kill(os.getpid(), signum)
    return row
Trainer.update = update_then_signal
sys.exit(main(sys.argv[3:]))
"""
KILL_RUN = {"max_steps": 12, "checkpoint_every": 4, "eval_every": 6}


def train_command(config, root):
    return ["train", "--config", str(config), "--state-dir", str(root / "state"), "--lora-dir",
            str(root / "lora"), "--log-csv", str(root / "log.csv"), "--samples",
            str(root / "samples.pt"), "--threads", "1"]


@pytest.fixture(scope="module")
def uninterrupted_run(make_run_config, tmp_path_factory):
    """A 12-update VGG-Flow run trained without interruption, and its config file."""
    root = tmp_path_factory.mktemp("uninterrupted")
    write_yaml_atomic(make_run_config(method_name="vggflow", train=KILL_RUN), root / "c.yaml")
    straight = subprocess.run([sys.executable, "-m", "vggflow",
                               *train_command(root / "c.yaml", root)],
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    return root


def fixed_or_random_kill(case: str) -> tuple[signal.Signals, int]:
    if case == "random":  # the draw is printed with any failure
        draw = random.Random()
        return draw.choice([signal.SIGKILL, signal.SIGTERM]), draw.randint(1, 11)
    name, at = case.split("@")
    return signal.Signals[name], int(at)


@pytest.mark.parametrize("case", ["SIGKILL@3", "SIGKILL@7", "SIGTERM@7", "random"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(uninterrupted_run, tmp_path, case):
    from safetensors.torch import load_file

    sig, at = fixed_or_random_kill(case)
    where = f"{sig.name} during update {at}"
    config, straight, killed = uninterrupted_run / "c.yaml", uninterrupted_run, tmp_path
    first = subprocess.run([sys.executable, "-c", SIGNAL_AT_UPDATE, str(at), str(int(sig)),
                            *train_command(config, killed)],
                           capture_output=True, text=True, timeout=300)
    # SIGKILL ends the process at once; SIGTERM lets it finish update `at`, save, and exit 130
    assert first.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), where
    assert not (killed / "log.csv").exists(), where
    # the state is saved every checkpoint_every and at every evaluation
    saved_at = at if sig == signal.SIGTERM else max(
        step for step in range(at) if step % KILL_RUN["checkpoint_every"] == 0
        or step % KILL_RUN["eval_every"] == 0)
    resumed = subprocess.run([sys.executable, "-m", "vggflow", *train_command(config, killed)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, f"{where}: {resumed.stderr}"
    if saved_at:
        assert f"at update {saved_at}" in resumed.stdout, where
    logs = [pd.read_csv(root / "log.csv") for root in (straight, killed)]
    assert logs[1]["step"].tolist() == list(range(1, 13)), where
    assert logs[0]["reward_mean"].tolist() == logs[1]["reward_mean"].tolist(), where
    for step in (6, 12):
        weights = [load_file(root / f"lora/step{step}/adapter_model.safetensors")
                   for root in (straight, killed)]
        assert weights[0].keys() == weights[1].keys(), where
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), where
    samples = [torch.load(root / "samples.pt", weights_only=False)["images"]
               for root in (straight, killed)]
    assert torch.equal(samples[0], samples[1]), where


def test_only_a_second_ctrl_c_stops_at_once():
    """SLURM and the multi-GPU launcher send SIGTERM to every process, so one process may get it
    twice: that, or SIGUSR1 after SIGTERM, keeps the request to save after the update; only
    Ctrl-C twice stops at once."""
    from vggflow.train import _StopFlag

    with _StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signal == signal.SIGTERM
    with _StopFlag() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored


def test_a_stop_during_the_last_update_finishes_the_run(make_run_config, tmp_path):
    """A stop request in the last update does not cost a retry: the run ends as finished."""
    cfg = RunConfig.from_mapping(make_run_config(method_name="refl"))
    trainer = Trainer(cfg, tmp_path / "state", threads=1)
    trainer.run(stop_after_steps=cfg.train.max_steps)  # would raise Interrupted before
    assert trainer.step == cfg.train.max_steps
    publish(trainer, tmp_path / "out")


def test_an_unreadable_state_is_set_aside_and_the_run_starts_over(make_run_config, tmp_path,
                                                                  capsys):
    """A truncated state file (a node crash) does not fail every retry: it is moved aside with
    its folder, named, and the run trains from scratch to the uninterrupted result."""
    cfg = RunConfig.from_mapping(make_run_config(method_name="refl"))
    straight = Trainer(cfg, tmp_path / "straight", threads=1)
    straight.run()
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    trainer = Trainer(cfg, state_dir, threads=1)
    trainer.run()
    assert "cannot be read" in capsys.readouterr().out
    assert (tmp_path / "state.unreadable" / STATE_FILE).read_bytes() == b"PK\x03\x04 truncated"
    assert trainer.step == cfg.train.max_steps
    ours, want = final_parameters(trainer), final_parameters(straight)
    assert all(torch.equal(ours[k], want[k]) for k in want)
