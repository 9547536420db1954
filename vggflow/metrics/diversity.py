"""Diversity of one prompt's images (design.md 5a).

With L2-normalised features e_1..e_n: (1 / (n - 1)) * sum_i |e_i - mean(e)|^2, the unbiased total
variance, which equals half the mean pairwise squared distance (the SOC / Adjoint Matching code's
"DreamSim Var"; the AM paper's formula is twice this).
"""

from __future__ import annotations

import numpy as np


def diversity(features: np.ndarray) -> float:
    e = np.asarray(features, dtype=np.float64)
    if e.ndim != 2 or len(e) < 2:
        raise ValueError(f"need (n>=2, D) features, got shape {e.shape}")
    e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(min=1e-12)
    return float(((e - e.mean(0)) ** 2).sum() / (len(e) - 1))
