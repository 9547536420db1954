"""Data parallelism across processes (one per GPU), launched by ``accelerate launch``.

An update's micro-batches are split into contiguous blocks, one per process: process r draws
and trains micro-batches r*k .. r*k + k - 1 of the update (k = accumulation steps / processes),
each with its own generator (``micro_batch_generator``), so every process has its own noise and
prompts and the update is the same whatever the number of processes. Gradients and logged sums
are all-reduced before clipping; scalars that need every sample (rewards, VGG-Flow's clipping
quantile) are gathered in micro-batch order. One process (rank 0) writes logs, state and files.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from typing import Protocol

import torch
from torch import Tensor


class Collective(Protocol):
    """What the trainer and methods need from the other processes (no-ops for one process)."""

    rank: int
    world_size: int

    def all_reduce_sum(self, tensors: list[Tensor]) -> None:
        """Replace each tensor, in place, by its sum over the processes."""
        ...

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Every process's ``tensor`` (same shape on all) concatenated along dim 0, rank order."""
        ...

    def broadcast_from_main(self, value: float) -> float: ...

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any."""
        ...


class SingleProcess:
    rank, world_size = 0, 1

    def all_reduce_sum(self, tensors: list[Tensor]) -> None:
        return None

    def all_gather(self, tensor: Tensor) -> Tensor:
        return tensor

    def broadcast_from_main(self, value: float) -> float:
        return value

    def any(self, flag: bool) -> bool:
        return flag


class ProcessGroup:
    """``torch.distributed`` with NCCL on GPUs and gloo on CPUs."""

    def __init__(self, device: str) -> None:
        import torch.distributed as dist

        self._dist = dist
        if not dist.is_initialized():
            # process 0 alone samples the evaluation images while the others wait in the next
            # collective: at SD3 scale that can outlast the default 10-minute timeout
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                    timeout=datetime.timedelta(hours=2))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device

    def all_reduce_sum(self, tensors: list[Tensor]) -> None:
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():  # one collective per dtype
            flat = torch.cat([t.reshape(-1) for t in group])
            self._dist.all_reduce(flat)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def all_gather(self, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def broadcast_from_main(self, value: float) -> float:
        box = torch.tensor([value], dtype=torch.float64, device=self.device)
        self._dist.broadcast(box, src=0)
        return float(box)

    def any(self, flag: bool) -> bool:
        box = torch.tensor([float(flag)], device=self.device)
        self._dist.all_reduce(box, op=self._dist.ReduceOp.MAX)
        return bool(box > 0)


def world_size_from_environment() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_from_environment() -> int:
    """This process's rank among the launched ones (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def local_device(device: str) -> str:
    """``cuda:<LOCAL_RANK>`` for data-parallel GPU runs, else ``device``."""
    if device == "cuda" and world_size_from_environment() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def collective_for(device: str) -> Collective:
    """A process group when launched as several processes (WORLD_SIZE > 1), else none."""
    if world_size_from_environment() > 1:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        return ProcessGroup(device)
    return SingleProcess()


def micro_batch_generator(seed: int, step: int, micro_batch: int) -> torch.Generator:
    """The generator of micro-batch ``micro_batch`` of update ``step`` (0-based) of a run.

    Derived from the three numbers alone, so any process can draw any micro-batch and a resumed
    run continues the same sequence without saved generator states.
    """
    digest = hashlib.sha256(f"{seed}/{step}/{micro_batch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
