"""The paper's figures: wall-clock convergence (Fig. 5), reward trade-off trajectories, the
evolution of fixed-noise samples over training (Fig. 1, right) and per-method sample grids
(Figs. 2-4).

Every function writes a PNG and a PDF next to it (``plots._save``) and returns the closed
matplotlib figure, whose artists still hold the plotted data. Samples are the dicts that
``samples.pt`` holds: ``steps`` (S update steps, 0 = base model), ``prompts`` (P strings) and
``images``, an array or CPU tensor (S, P, n, C, H, W) in [0, 1] with C = 1 (grey) or 3 (RGB),
image j of every prompt drawn from the same noise at every checkpoint and for every method.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vggflow.analysis.plots import (
    _band_panels,
    _pyplot,
    _reward_runs,
    _save,
    _seed_stats,
    _trajectory_panels,
)
from vggflow.analysis.style import BASE, label, ordered_methods

RUN_KEYS = ["reward", "method", "seed", "step"]
CELL_IN = 1.1  # side of one image in a grid, inches
TINY_PX = 64  # images up to this side are drawn with nearest-neighbour interpolation


def wallclock_stats(metrics: pd.DataFrame, times: pd.DataFrame, reward: str) -> pd.DataFrame:
    """Per (method, metric, step) of the runs trained on ``reward``: ``x``, the training wall
    time in seconds (mean over seeds), and the metric's ``mean`` and ``std`` over seeds.

    ``times`` rows join ``metrics`` on (reward, method, seed, step); step 0 (the base model) is at
    0 s when ``times`` lacks it, and any other step without a time is a ValueError.
    """
    runs = _reward_runs(metrics, reward)
    missing = {*RUN_KEYS, "elapsed_s"} - set(times.columns)
    if missing:
        raise ValueError(f"times lack column(s) {sorted(missing)}")
    times = times[[*RUN_KEYS, "elapsed_s"]].drop_duplicates(RUN_KEYS, keep="last")
    runs = runs.merge(times, on=RUN_KEYS, how="left", validate="many_to_one")
    runs.loc[runs["step"] == 0, "elapsed_s"] = runs.loc[runs["step"] == 0, "elapsed_s"].fillna(0.0)
    untimed = runs.loc[runs["elapsed_s"].isna(), ["method", "seed", "step"]].drop_duplicates()
    if not untimed.empty:
        raise ValueError(f"no elapsed_s in times for {len(untimed)} (method, seed, step) of "
                         f"reward {reward!r}, e.g. {list(untimed.itertuples(index=False))[:3]}")
    return _seed_stats(runs, "elapsed_s")


def time_unit(seconds: float) -> tuple[float, str]:
    """(seconds per unit, unit name) for an axis reaching ``seconds``: s, min or h."""
    if seconds < 120:
        return 1.0, "s"
    if seconds < 2 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def convergence_wallclock(metrics: pd.DataFrame, times: pd.DataFrame, reward: str,
                          path: str | Path):
    """One panel per metric of the runs trained on ``reward`` against training wall time.

    Mean with a ± std band over seeds (paper Fig. 5); x is the seeds' mean ``elapsed_s`` at each
    evaluated update, in s, min or h by range (evaluation sampling excluded).
    """
    stats = wallclock_stats(metrics, times, reward)
    scale, unit = time_unit(stats["x"].max())
    stats["x"] = stats["x"] / scale
    return _band_panels(stats, f"training wall time ({unit})",
                        f"Finetuning on {reward} against wall time (mean ± std over seeds)", path)


def pareto(metrics: pd.DataFrame, reward: str, path: str | Path):
    """Trained reward (y) against each diversity and fd_prior metric (x) of the runs on ``reward``.

    One trajectory per method (or per variant when ``metrics`` has a ``variant`` column) through
    its checkpoints, mean over seeds with ± std error bars on both axes, starting from the base
    model (step 0, the grey star).
    """
    return _trajectory_panels(metrics, reward, path)


def _images(samples: dict) -> np.ndarray:
    """``samples["images"]`` as an array (S, P, n, C, H, W), float in [0, 1] or uint8 levels (no
    copy: the images drawn are converted one at a time), checked against steps and prompts."""
    images = np.asarray(samples["images"])
    if images.ndim != 6 or images.shape[3] not in (1, 3):
        raise ValueError(f"images must be (S, P, n, C, H, W) with C 1 or 3, got {images.shape}")
    if images.shape[:2] != (len(samples["steps"]), len(samples["prompts"])):
        raise ValueError(f"images {images.shape} do not match {len(samples['steps'])} steps and "
                         f"{len(samples['prompts'])} prompts")
    return images


def _check_indices(name: str, indices: Iterable[int], size: int) -> list[int]:
    """``indices`` as a non-empty list, each in [0, size), or a ValueError."""
    indices = list(indices)
    bad = [i for i in indices if not 0 <= i < size]
    if not indices or bad:
        raise ValueError(f"{name} {bad or indices} out of range: need at least one in [0, {size})")
    return indices


def _mosaic_gap(height: int) -> int:
    """White pixels between the tiles of a mosaic of tiles ``height`` pixels high."""
    return max(1, height // 8)


def mosaic(tiles: np.ndarray) -> np.ndarray:
    """Tiles (R, C, ch, H, W), in [0, 1] or uint8 levels, as one (R, C) image grid in [0, 1]
    with white gaps of max(1, H // 8) pixels: (R H + (R - 1) gap, C W + (C - 1) gap) for ch = 1,
    with a trailing channel axis for ch = 3. One image per block keeps a figure of hundreds of
    samples to a few axes (matplotlib's layout and drawing cost grows with the axes)."""
    rows, cols, channels, height, width = tiles.shape
    scale = 255.0 if tiles.dtype == np.uint8 else 1.0
    tiles = np.clip(np.asarray(tiles, dtype=np.float32) / scale, 0.0, 1.0)
    gap = _mosaic_gap(height)
    grid = np.ones((channels, rows * (height + gap) - gap, cols * (width + gap) - gap),
                   dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            top, left = r * (height + gap), c * (width + gap)
            grid[:, top:top + height, left:left + width] = tiles[r, c]
    return grid[0] if channels == 1 else grid.transpose(1, 2, 0)


def _show_mosaic(ax, tiles: np.ndarray, row_labels: Sequence[str] | None = None,
                 column_labels: Sequence[str] | None = None) -> None:
    """Draw :func:`mosaic` of ``tiles`` on one axes (grey colormap for one channel, nearest-
    neighbour interpolation for tiles up to TINY_PX), labels at the tiles' centres."""
    rows, cols, channels, height, width = tiles.shape
    interpolation = "nearest" if max(height, width) <= TINY_PX else "antialiased"
    grey = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if channels == 1 else {}
    ax.imshow(mosaic(tiles), interpolation=interpolation, **grey)
    gap = _mosaic_gap(height)
    ax.set_yticks([r * (height + gap) + (height - 1) / 2 for r in range(rows)] if row_labels
                  else [], row_labels or [], fontsize=7)
    ax.set_xticks([c * (width + gap) + (width - 1) / 2 for c in range(cols)] if column_labels
                  else [], column_labels or [], fontsize=9)
    ax.tick_params(length=0, labeltop=True, labelbottom=False)
    ax.grid(False)  # the plots' style draws grid lines at ticks
    for spine in ax.spines.values():
        spine.set_visible(False)


def sample_evolution(samples: dict, path: str | Path, prompt_index: int = 0,
                     image_indices: Sequence[int] = (0, 1, 2, 3), title: str | None = None):
    """Fixed-noise samples of one prompt over training (paper Fig. 1, right).

    Rows are the noise seeds ``image_indices``, columns the checkpoints labelled with their update
    step; ``title`` defaults to the prompt.
    """
    plt = _pyplot()

    images = _images(samples)
    prompt_index = _check_indices("prompt index", [prompt_index], images.shape[1])[0]
    rows = _check_indices("image indices", image_indices, images.shape[2])
    steps = list(samples["steps"])
    fig, ax = plt.subplots(layout="constrained",
                           figsize=(CELL_IN * len(steps) + 0.6, CELL_IN * len(rows) + 0.6))
    tiles = np.stack([np.asarray(images[:, prompt_index, j]) for j in rows])  # (rows, steps, ...)
    _show_mosaic(ax, tiles, row_labels=[f"noise {j}" for j in rows],
                 column_labels=[f"step {step}" for step in steps])
    fig.suptitle(title if title is not None else
                 textwrap.shorten(str(samples["prompts"][prompt_index]), 90))
    _save(fig, path)
    return fig


def method_grid(samples_by_method: dict[str, dict], steps: dict[str, int],
                rewards: dict[str, float], path: str | Path,
                prompt_indices: Iterable[int] | None = None, images_per_prompt: int = 4,
                title: str | None = None):
    """Samples of each method at its selected checkpoint (paper Figs. 2-4).

    One column block per method of ``steps`` (style order, base first), at update ``steps[m]``,
    titled with its label, step and mean reward ``rewards[m]``; rows are the prompts
    ``prompt_indices`` (default all), columns the first ``images_per_prompt`` noise seeds, the
    same in every block. The base block's images default to step 0 of any method's samples.
    """
    plt = _pyplot()

    if not samples_by_method:
        raise ValueError("no samples given")
    methods = ordered_methods(steps)
    no_reward = [m for m in methods if m not in rewards]
    if no_reward:
        raise ValueError(f"no mean reward given for method(s) {no_reward}")
    reference = next(iter(samples_by_method.values()))
    blocks = []
    for method in methods:
        samples = samples_by_method.get(method, reference if method == BASE else None)
        if samples is None:
            raise ValueError(f"no samples for method {method!r}")
        if list(samples["prompts"]) != list(reference["prompts"]):
            raise ValueError(f"method {method!r} was sampled on other prompts than the others")
        checkpoints = list(samples["steps"])
        if steps[method] not in checkpoints:
            raise ValueError(f"step {steps[method]} of method {method!r} is not a sampled "
                             f"checkpoint {checkpoints}")
        blocks.append((method, _images(samples)[checkpoints.index(steps[method])]))
    prompts = _check_indices("prompt indices",
                             range(len(reference["prompts"])) if prompt_indices is None
                             else prompt_indices, len(reference["prompts"]))
    smallest = min(images.shape[1] for _, images in blocks)
    if not 1 <= images_per_prompt <= smallest:
        raise ValueError(f"images_per_prompt {images_per_prompt} not in [1, {smallest}]")

    fig, axes = plt.subplots(1, len(blocks), squeeze=False, layout="constrained", figsize=(
        (CELL_IN * images_per_prompt + 0.3) * len(blocks) + 0.6, CELL_IN * len(prompts) + 0.9))
    prompt_labels = [textwrap.fill(textwrap.shorten(str(reference["prompts"][p]), 60), 20)
                     for p in prompts]
    for index, (ax, (method, images)) in enumerate(zip(axes[0], blocks)):
        ax.set_title(f"{label(method)}\nstep {steps[method]}, reward {rewards[method]:.3g}",
                     fontsize=9)
        tiles = np.stack([np.asarray(images[p, :images_per_prompt]) for p in prompts])
        _show_mosaic(ax, tiles, row_labels=prompt_labels if index == 0 else None)
    if title is not None:
        fig.suptitle(title)
    _save(fig, path)
    return fig
