"""Fréchet distance between Gaussian fits of two feature sets.

FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}).

With 16 images per prompt the covariances are singular, so the trace of the matrix square root
is taken from the eigenvalues of the symmetric PSD matrix S_a^{1/2} S_b S_a^{1/2} (clipped at 0),
which has the same spectrum as S_a S_b and needs no inverse. Covariances use ddof = 1.
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray,
                              cov_b: np.ndarray) -> float:
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD between two (N, D) feature sets (N >= 2 each)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N>=2, D) feature sets, got {a.shape} and {b.shape}")
    dim = a.shape[1]
    cov_a = np.cov(a, rowvar=False, ddof=1).reshape(dim, dim)
    cov_b = np.cov(b, rowvar=False, ddof=1).reshape(dim, dim)
    return gaussian_frechet_distance(a.mean(0), cov_a, b.mean(0), cov_b)
