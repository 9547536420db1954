"""All metrics of a run's evaluation samples, one row per (step, metric).

Names (design.md 5a): ``reward_<name>`` for every reward of the suite (mean over prompts and
images); ``diversity_<backend>``, ``fd_prior_<backend>`` (per prompt against the base model's
images on the same noise) and ``fd_ref_<backend>`` (per prompt against the suite's real
reference images), each averaged over prompts, for every feature network (backend) asked for.
:func:`score_run` writes them for a run's published samples (the ``train`` job, after training,
and ``vggflow metrics``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from vggflow.metrics.diversity import diversity
from vggflow.metrics.frechet import frechet_distance

if TYPE_CHECKING:
    from vggflow.config import RunConfig
    from vggflow.suites.base import Suite


def step_metrics(
    images: Tensor,
    base_images: Tensor,
    prompts: Sequence[str],
    rewards: dict[str, Callable],
    extractors: dict[str, Callable[[Tensor], Tensor]],
    reference: Callable[[str], Tensor | None],
    extra: Callable[[Tensor], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Metrics of images (P, n, C, H, W) against the base model's (P, n, C, H, W), with every
    feature extractor of ``extractors`` (backend name -> (N, ...) images to (N, D) features)."""
    flat_prompts = [p for p in prompts for _ in range(images.shape[1])]
    flat = images.flatten(0, 1)
    out = {}
    with torch.no_grad():
        for name, reward in rewards.items():
            out[f"reward_{name}"] = float(reward(flat, flat_prompts).float().mean())
    for backend, features in extractors.items():
        out.update(_feature_metrics(images, base_images, prompts, features, backend, reference))
    if extra is not None:
        out.update(extra(images))
    return out


def _feature_metrics(images: Tensor, base_images: Tensor, prompts: Sequence[str],
                     features: Callable[[Tensor], Tensor], backend: str,
                     reference: Callable[[str], Tensor | None]) -> dict[str, float]:
    def embed(batch: Tensor) -> np.ndarray:
        with torch.no_grad():
            return features(batch).double().cpu().numpy()

    divs, fd_prior, fd_ref = [], [], []
    for p, prompt in enumerate(prompts):
        feats = embed(images[p])
        divs.append(diversity(feats))
        fd_prior.append(frechet_distance(feats, embed(base_images[p])))
        ref = reference(prompt)
        if ref is not None:
            fd_ref.append(frechet_distance(feats, embed(ref)))
    out = {f"diversity_{backend}": float(np.mean(divs)),
           f"fd_prior_{backend}": float(np.mean(fd_prior))}
    if fd_ref:
        out[f"fd_ref_{backend}"] = float(np.mean(fd_ref))
    return out


def score_run(cfg: RunConfig, suite: Suite, samples_path: str | Path,
              base_samples_path: str | Path, out_path: str | Path) -> None:
    """Every metric of a run's samples (``samples.pt``, read one checkpoint at a time) against
    the base model's, one CSV row per (step, metric), written atomically to ``out_path``.

    ``suite`` is the run's built suite (its rewards, feature networks and reference images).
    """
    from vggflow.sampling import stored_images_as_float
    from vggflow.utils.io import torch_load

    samples = torch_load(samples_path, "run samples", mmap=True)
    base = torch_load(base_samples_path, "base-model samples",
                      "it is made by the workflow rule sample_base")
    if list(samples["prompts"]) != list(base["prompts"]):
        raise ValueError(f"{samples_path} and {base_samples_path} use different prompts; "
                         "sample the base model again with the run's config (rule sample_base)")
    rewards = {name: suite.reward(name) for name in cfg.rewards}
    extractors = suite.feature_extractors(cfg.eval.features)
    base_images = stored_images_as_float(base["images"][0])
    rows = []
    for step, images in zip(samples["steps"], samples["images"]):
        values = step_metrics(stored_images_as_float(images), base_images, samples["prompts"],
                              rewards, extractors, suite.reference_images, suite.extra_metrics)
        rows += [{"reward": cfg.reward, "method": cfg.method["name"], "seed": cfg.seed,
                  "step": step, "metric": k, "value": v} for k, v in values.items()]
        print(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()), flush=True)
    write_rows_csv(rows, out_path)


def write_rows_csv(rows: list[dict], out_path: str | Path) -> None:
    """Rows (same keys) as CSV, atomically, as pandas' ``to_csv(index=False)`` writes them
    (floats by shortest repr, NaN as an empty field) without importing pandas (0.6 s)."""
    from vggflow.utils.io import atomic_path

    def field(value):
        if isinstance(value, (float, np.floating)):
            return "" if math.isnan(value) else repr(float(value))
        return value

    with atomic_path(out_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(rows[0])
        writer.writerows([field(value) for value in row.values()] for row in rows)
