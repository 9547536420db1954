"""Shared fixtures: tiny digits resources trained in seconds, and a run config builder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vggflow", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="session")
def digits_resources(tmp_path_factory) -> dict:
    """Data split, base model, both reward nets and the evaluation net, trained for few steps."""
    import numpy as np
    import torch

    from vggflow.digits_data import prepare_digits
    from vggflow.models.digits import pretrain_flow
    from vggflow.rewards.digits import train_reward_net
    from vggflow.suites.digits import load_split, train_eval_net
    from vggflow.utils.io import torch_save_atomic

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("digits")
    np.savez(root / "data.npz", **prepare_digits(0.2, 0))
    images, labels = load_split(root / "data.npz", "train")
    net, _ = pretrain_flow(images, labels, steps=300, batch_size=128, lr=2e-3, hidden=64,
                           depth=2, label_dropout=0.15, ema_decay=0.9, seed=0, log_every=1000)
    torch_save_atomic({"arch": net.arch, "state_dict": net.state_dict()}, root / "base.pt")
    rewards = {}
    for name in ("thickness", "margin"):
        reward_net = train_reward_net(name, images, labels, steps=60, seed=1)
        torch_save_atomic({"name": name, "outputs": reward_net.fc2.out_features,
                           "state_dict": reward_net.state_dict()}, root / f"{name}.pt")
        rewards[name] = str(root / f"{name}.pt")
    eval_net = train_eval_net(images, labels, steps=60, seed=2)
    torch_save_atomic({"state_dict": eval_net.state_dict()}, root / "eval_net.pt")
    return {"data": str(root / "data.npz"), "base_model": str(root / "base.pt"),
            "rewards": rewards, "eval_net": str(root / "eval_net.pt")}


@pytest.fixture(scope="session")
def make_run_config(digits_resources):
    """A resolved digits run config (dict) with small settings; keyword overrides per block."""

    def make(method_name: str = "vggflow", reward: str = "margin", seed: int = 0,
             **blocks) -> dict:
        method_block = {"vggflow": {"name": "vggflow", "lr": 1e-3, "beta": 1.0, "alpha": 100.0},
                        "refl": {"name": "refl", "lr": 1e-3}}.get(method_name,
                                                                  {"name": method_name})
        cfg = {
            "suite": "digits",
            "reward": reward,
            "rewards": ["thickness", "margin"],
            "seed": seed,
            "method": method_block,
            "train": {"max_steps": 4, "effective_batch_size": 8, "micro_batch_size": 4,
                      "eval_every": 2, "checkpoint_every": 1, "log_every": 1, "device": "cpu"},
            "sampler": {"num_steps": 20, "guidance_scale": 2.0},
            "eval": {"seed": 1234, "images_per_prompt": 4},
            "lora": {"rank": 4, "alpha": 4},
            "resources": digits_resources,
        }
        for block, values in blocks.items():
            if isinstance(cfg.get(block), dict) and isinstance(values, dict):
                cfg[block] = {**cfg[block], **values}
            else:
                cfg[block] = values
        return cfg

    return make
