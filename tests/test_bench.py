"""The update-cost benchmark (vggflow.bench): FLOP counts with exact answers, the side-by-side
table's consistency, and its figure."""

from __future__ import annotations

import torch

from vggflow.bench import PHASES, PhaseTimer, plot, side_by_side
from vggflow.config import write_yaml_atomic
from vggflow.utils.io import torch_load


def test_phase_timer_counts_matmul_flops_per_phase():
    timer = PhaseTimer("cpu", count_flops=True)
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with timer("first"):
        a @ b
    with timer("second"):
        (a @ b) @ torch.randn(4, 3)
    with timer("first"):
        a @ b
    assert timer.flops == {"first": 2 * 2 * 8 * 16 * 4, "second": 2 * 8 * 16 * 4 + 2 * 8 * 4 * 3}
    assert set(timer.seconds) == {"first", "second"} and min(timer.seconds.values()) > 0


def rollout_flops(resources: dict, cfg: dict) -> int:
    """Matmul FLOPs of one guided Euler rollout of the digits MLP with LoRA on every linear."""
    arch = torch_load(resources["base_model"], "digits base model")["arch"]
    dim, hidden, depth, time_dim = arch["dim"], arch["hidden"], arch["depth"], arch["time_dim"]
    layers = [(dim, hidden), (time_dim, hidden), *[(hidden, hidden)] * depth, (hidden, dim)]
    rank = cfg["lora"]["rank"]
    per_row = sum(i * o + rank * (i + o) for i, o in layers)
    rows = 2 * cfg["train"]["micro_batch_size"]  # conditional and unconditional branches
    return 2 * rows * per_row * cfg["sampler"]["num_steps"]


def test_side_by_side_rows_add_up(make_run_config, digits_resources, tmp_path):
    paths = []
    for method in ("refl", "vggflow"):
        cfg = make_run_config(method_name=method, train={"effective_batch_size": 4})
        paths.append(tmp_path / f"{method}.yaml")
        write_yaml_atomic(cfg, paths[-1])
    table = side_by_side(paths, updates=2, warmup=0, threads=1)
    assert table["method"].tolist() == ["refl", "vggflow"]
    expected_rollout = rollout_flops(digits_resources, cfg)
    for _, row in table.iterrows():
        assert row["rollout_gflop"] * 1e9 == expected_rollout
        assert abs(row["gflop_per_update"] - sum(row[f"{p}_gflop"] for p in PHASES)) < 1e-9
        phase_seconds = sum(row[f"{p}_s"] for p in PHASES)
        assert 0.5 * row["seconds_per_update"] < phase_seconds <= row["seconds_per_update"]
        assert 0 < row["mfu"] < 1 and row["peak_memory_mb"] > 0 and row["startup_s"] > 0
        assert row["batch_size"] == 4 and row["dtype"] == "float32"
    refl, vggflow = table.iloc[0], table.iloc[1]
    assert refl["update_value_net_gflop"] == 0 and vggflow["update_value_net_gflop"] > 0
    assert refl["update_lora_gflop"] > 0  # backward through the sampling chain and the reward
    plot(table, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 0 and (tmp_path / "cost.pdf").exists()
