"""All metrics of a run's evaluation samples, one row per (step, metric).

Names (design.md 5a): ``reward_<name>`` for every reward of the suite (mean over prompts and
images); ``diversity_<backend>``, ``fd_prior_<backend>`` (per prompt against the base model's
images on the same noise) and ``fd_ref_<backend>`` (per prompt against the suite's real
reference images), each averaged over prompts, for every feature network (backend) asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from vggflow.metrics.diversity import diversity
from vggflow.metrics.frechet import frechet_distance


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
