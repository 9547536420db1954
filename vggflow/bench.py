"""Side-by-side cost of every method's optimizer update: wall time and FLOPs per phase, memory.

Each run config is measured in a fresh process, one after the other, so that peak memory is
the method's own and the methods share the machine's state. Per method: the process start-up
(interpreter and imports) and the build (suite, models, optimizers); ``warmup`` untimed updates;
one update under ``torch.utils.flop_counter`` (FLOPs per phase); then ``updates`` timed updates.

Phases of an update (``Trainer.update``): ``rollout`` (on-policy trajectories, no gradient),
``reward`` (scoring the final samples), ``prepare`` (the method's work per micro-batch: Adjoint
Matching's adjoint ODE with its terminal reward gradient, VGG-Flow's transitions),
``update_value_net`` (VGG-Flow) and ``update_lora`` (the flow model's loss, backward through the
reward for ReFL, DRaFT and VGG-Flow, and the optimizer step). Model FLOPs utilisation (MFU) is
FLOPs per second of a timed update over the device's measured matmul throughput in the dtype the
flow model runs in.

Below the phases, the named regions of ``vggflow.regions`` (each trained module's loss, backward
and step; VGG-Flow's velocities, reward gradients and differences; Adjoint Matching's terminal
reward gradient and adjoint ODE; VGG-Flow-PMP's costate ODE) get the same figures, inclusive of
the regions nested in them: seconds from the timed updates (CUDA events, so no extra
synchronisation), FLOPs from the counted one.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

PHASES = ("rollout", "reward", "prepare", "update_value_net", "update_lora")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break the
    ``torch.autograd.grad`` calls inside methods: every count goes to ``Global``."""

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc) -> None:
        return None


def flop_counter():
    """``torch.utils.flop_counter.FlopCounterMode`` without per-module attribution."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    return counter


class RegionTimer:
    """Seconds, calls and (with ``count_flops``) FLOPs per named region, each inclusive of the
    regions nested in it. A region is keyed by its path, the names of the regions it was
    entered in and its own joined by " > ", so that one name entered in two places (VGG-Flow's
    reward gradient in the value loss and, inside it, in the derivative of g) is two regions.

    On CUDA the seconds come from events recorded on the current stream and read by
    :meth:`seconds` afterwards, so measuring adds no synchronisation inside an update; on the
    CPU they come from ``time.perf_counter``.
    """

    def __init__(self, device: str, count_flops: bool = False) -> None:
        self.cuda, self.count_flops = device.startswith("cuda"), count_flops
        self.calls: dict[str, int] = defaultdict(int)  # in the order regions were first entered
        self.flops: dict[str, int] = defaultdict(int)
        self._spans: list[tuple[str, object, object]] = []
        self._open: list[str] = []

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        path = " > ".join([*self._open[-1:], name])
        self.calls[path] += 1
        counter = flop_counter() if self.count_flops else contextlib.nullcontext()
        self._open.append(path)
        start = self._mark()
        try:
            with counter:
                yield
        finally:
            self._spans.append((path, start, self._mark()))
            self._open.pop()
        if self.count_flops:
            self.flops[path] += counter.get_total_flops()

    def seconds(self) -> dict[str, float]:
        """Total seconds per region path (waits for the device first)."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for path, start, end in self._spans:
            totals[path] += start.elapsed_time(end) / 1e3 if self.cuda else end - start
        return dict(totals)


def matmul_throughput(device: str, dtype: torch.dtype, size: int | None = None,
                      repeats: int = 5) -> float:
    """Best FLOP/s of ``size`` x ``size`` matrix products on ``device`` in ``dtype``."""
    size = size or (8192 if device.startswith("cuda") else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * size**3 / best


def model_dtype(trainer) -> torch.dtype:
    """The dtype the flow model's adapter computes in (its frozen weights' dtype)."""
    frozen = [p for p in trainer.model.adapter().parameters() if not p.requires_grad]
    return frozen[0].dtype if frozen else torch.float32


def process_start_time() -> float:
    import psutil

    return psutil.Process().create_time()


def measure(config_path: str, updates: int, warmup: int, threads: int | None) -> dict:
    """Cost of one run config's updates (run in a fresh process by :func:`side_by_side`):
    ``row``, the whole update's, and ``regions``, one row per named region (phases included)."""
    entered = time.time()
    from vggflow.config import RunConfig
    from vggflow.regions import measured_by
    from vggflow.train import Trainer, peak_memory_mb

    started = process_start_time()
    cfg = RunConfig.load(config_path)
    with tempfile.TemporaryDirectory() as state_dir:
        build_start = time.perf_counter()
        trainer = Trainer(cfg, state_dir, threads=threads)
        build_s = time.perf_counter() - build_start
        device = trainer.device
        for _ in range(warmup):
            trainer.update()
        flops = RegionTimer(device, count_flops=True)
        with measured_by(flops):
            trainer.update()
        timer = RegionTimer(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        start = time.perf_counter()
        rewards = []
        with measured_by(timer):
            for _ in range(updates):
                rewards.append(trainer.update()["reward_mean"])
        synchronize(device)
        seconds = (time.perf_counter() - start) / updates
        region_seconds = timer.seconds()
        dtype = model_dtype(trainer)
    peak = matmul_throughput(device, dtype)
    flops_per_update = sum(flops.flops.get(phase, 0) for phase in PHASES)  # regions nest in them
    train = cfg.train
    row = {
        "suite": cfg.suite, "reward": cfg.reward, "method": cfg.method["name"],
        "device": device_name(device), "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch_size": train.micro_batch_size * train.accumulation_steps,
        "micro_batch_size": train.micro_batch_size, "num_steps": cfg.sampler.num_steps,
        "timed_updates": updates, "startup_s": round(entered - started, 3),
        "build_s": round(build_s, 3), "seconds_per_update": seconds,
        **{f"{phase}_s": region_seconds.get(phase, 0.0) / updates for phase in PHASES},
        "gflop_per_update": flops_per_update / 1e9,
        **{f"{phase}_gflop": flops.flops.get(phase, 0) / 1e9 for phase in PHASES},
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "matmul_tflops": peak / 1e12,
        "mfu": flops_per_update / seconds / peak,
        "reward_mean": sum(rewards) / len(rewards),
    }
    regions = [
        {"method": row["method"], "path": path, "region": path.rsplit(" > ", 1)[-1],
         "calls_per_update": calls / updates,
         "seconds_per_update": region_seconds[path] / updates,
         "share_of_update": region_seconds[path] / updates / seconds,
         "gflop_per_update": flops.flops.get(path, 0) / 1e9,
         "mfu": flops.flops.get(path, 0) / max(region_seconds[path] / updates, 1e-9) / peak}
        for path, calls in timer.calls.items()
    ]
    return {"row": row, "regions": regions}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def side_by_side(config_paths: Sequence[str | Path], updates: int = 3, warmup: int = 1,
                 threads: int | None = None):
    """(update costs, region costs): one row per config, each measured in its own fresh process,
    in order, and one row per config and named region of its update (``vggflow.regions``)."""
    import pandas as pd

    context = multiprocessing.get_context("spawn")
    rows, regions = [], []
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for path in config_paths:
            measured = pool.submit(measure, str(path), updates, warmup, threads).result()
            row = measured["row"]
            regions.extend(measured["regions"])
            print(f"{row['method']}: {row['seconds_per_update']:.3f} s/update, "
                  f"{row['gflop_per_update']:.2f} GFLOP, MFU {row['mfu']:.1%}, "
                  f"peak {row['peak_memory_mb']:.0f} MB", flush=True)
            rows.append(row)
    today = datetime.date.today().isoformat()
    table, region_table = pd.DataFrame(rows), pd.DataFrame(regions)
    table.insert(0, "date", today)
    region_table.insert(0, "date", today)
    return table, region_table


def plot(table, path: str | Path) -> None:
    """Stacked seconds per update by phase, one bar per method (PNG at ``path``, and PDF)."""
    from vggflow.analysis.plots import _pyplot, _save

    plt = _pyplot()
    phases = [p for p in PHASES if table[f"{p}_s"].sum() > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0] * len(table)
    for phase in phases:
        values = table[f"{phase}_s"].tolist()
        ax.bar(table["method"], values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds per update")
    plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
    first = table.iloc[0]
    ax.set_title(f"{first['suite']}: batch {first['batch_size']}, {first['num_steps']} steps, "
                 f"{first['device']}", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)
