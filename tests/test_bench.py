"""The update-cost benchmark (vggflow.bench): FLOP counts with exact answers, the side-by-side
table's consistency, and its figure."""

from __future__ import annotations

import torch

from vggflow.bench import PHASES, RegionTimer, plot, side_by_side
from vggflow.config import write_yaml_atomic
from vggflow.regions import measured_by, region
from vggflow.utils.io import torch_load


def test_region_timer_counts_nested_regions_inclusively():
    timer = RegionTimer("cpu", count_flops=True)
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with measured_by(timer):
        with region("first"):
            a @ b
            with region("inner"):
                a @ b
        with region("second"):
            (a @ b) @ torch.randn(4, 3)
        with region("first"):
            a @ b
    with region("outside"):  # not measured
        a @ b
    product = 2 * 8 * 16 * 4
    assert timer.flops == {"first": 3 * product, "first > inner": product,
                           "second": product + 2 * 8 * 4 * 3}
    assert timer.calls == {"first": 2, "first > inner": 1, "second": 1}
    seconds = timer.seconds()
    assert set(seconds) == {"first", "first > inner", "second"}
    assert 0 < seconds["first > inner"] < seconds["first"]


def flow_net_flops(resources: dict, rows: int, lora_rank: int = 0) -> int:
    """Matmul FLOPs of the digits MLP on ``rows`` inputs (with a LoRA of that rank on every
    linear layer, or without one)."""
    arch = torch_load(resources["base_model"], "digits base model")["arch"]
    dim, hidden, depth, time_dim = arch["dim"], arch["hidden"], arch["depth"], arch["time_dim"]
    layers = [(dim, hidden), (time_dim, hidden), *[(hidden, hidden)] * depth, (hidden, dim)]
    return 2 * rows * sum(i * o + lora_rank * (i + o) for i, o in layers)


def rollout_flops(resources: dict, cfg: dict) -> int:
    """Matmul FLOPs of one guided Euler rollout of the digits MLP with LoRA on every linear."""
    rows = 2 * cfg["train"]["micro_batch_size"]  # conditional and unconditional branches
    return flow_net_flops(resources, rows, cfg["lora"]["rank"]) * cfg["sampler"]["num_steps"]


def test_side_by_side_rows_add_up(make_run_config, digits_resources, tmp_path):
    paths = []
    for method in ("refl", "vggflow"):
        cfg = make_run_config(method_name=method, train={"effective_batch_size": 4})
        paths.append(tmp_path / f"{method}.yaml")
        write_yaml_atomic(cfg, paths[-1])
    table, regions = side_by_side(paths, updates=2, warmup=0, threads=1)
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

    # regions: the phases as in the table; every region within its parent; exact FLOPs where the
    # work is known (v_base: the guided base model on 5 transitions of each of the 4 samples)
    for (method, row), (_, rows) in zip(table.set_index("method").iterrows(),
                                        regions.groupby("method", sort=False)):
        by_path = rows.set_index("path")
        for phase in PHASES:
            if phase in by_path.index:
                assert by_path.loc[phase, "seconds_per_update"] == row[f"{phase}_s"]
                assert by_path.loc[phase, "gflop_per_update"] == row[f"{phase}_gflop"]
        nested = [path for path in by_path.index if " > " in path]
        assert len(nested) >= 3, method  # the flow model's loss, backward and step at least
        for path in nested:
            child, parent = by_path.loc[path], by_path.loc[path.rsplit(" > ", 1)[0]]
            assert child["gflop_per_update"] <= parent["gflop_per_update"] + 1e-12, path
            assert child["seconds_per_update"] <= parent["seconds_per_update"], path
    vggflow_regions = regions[regions["method"] == "vggflow"].set_index("path")
    in_value_loss = "update_value_net > value_net/loss > vggflow/"
    assert {"update_value_net > value_net/backward", "update_value_net > value_net/step",
            *(in_value_loss + name for name in ("v_base", "reward_grad", "g_derivative",
                                               "base_jacobian", "boundary")),
            "update_lora > lora/loss", "update_lora > lora/backward"} <= set(vggflow_regions.index)
    v_base = vggflow_regions.loc[in_value_loss + "v_base"]
    assert v_base["gflop_per_update"] * 1e9 == flow_net_flops(digits_resources, rows=2 * 5 * 4)
    assert v_base["calls_per_update"] == 1 and v_base["region"] == "vggflow/v_base"
    assert not regions[regions["method"] == "refl"]["region"].str.startswith("vggflow/").any()
