"""What produced a result: git commit, package versions, torch, device, seed, host memory."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import resource
import subprocess
from pathlib import Path

PACKAGES = ("torch", "numpy", "peft", "diffusers", "transformers", "scikit-learn", "pandas")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def host_peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux's ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def provenance(seed: int | None, device: str) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    on_cuda = device.startswith("cuda")
    host_cpu = platform.processor() or platform.machine()
    device_name = torch.cuda.get_device_name() if on_cuda else host_cpu
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "packages": versions,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "device_name": device_name,
        "python": platform.python_version(),
        "host": platform.node(),
        "seed": seed,
        # a process forked from the fork server starts from the server's, which holds the same
        # imports
        "host_peak_rss_mb": round(host_peak_rss_mb(), 1),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
