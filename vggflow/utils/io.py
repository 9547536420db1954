"""Atomic file writes: a reader never sees a half-written output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Works for files and directories; an existing directory at ``path`` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.")) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through :func:`atomic_path`, flushed to disk before the rename (a node that
    crashes right after leaves the old file or the whole new one, not a truncated one)."""
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())


def torch_load(path: str | os.PathLike, what: str, hint: str = "", mmap: bool = False) -> Any:
    """Load a torch file, with an error that names the missing file and how to make it.
    ``mmap``: map its tensors from the file, read as they are used (large sample files)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}" + (f"; {hint}" if hint else ""))
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)


def copy_tree_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp)


def copy_file_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A hard link (no second copy on disk), or a copy where the filesystem refuses one."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Put the file or folder tree ``src`` at ``dst`` atomically, its files as hard links."""
    with atomic_path(dst) as tmp:
        if Path(src).is_dir():
            shutil.copytree(src, tmp, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, tmp)
