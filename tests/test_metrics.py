import numpy as np
import pytest
from scipy import linalg

from vggflow.metrics.diversity import diversity
from vggflow.metrics.frechet import frechet_distance, gaussian_frechet_distance


def test_fd_one_dimensional_closed_form():
    # FD(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2
    fd = gaussian_frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]),
                                   np.array([[0.25]]))
    assert fd == pytest.approx(9.0 + (2.0 - 0.5) ** 2)


def test_fd_matches_scipy_sqrtm_on_full_rank():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 5)), rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5)) + 1
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = (np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real))
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)


def test_fd_singular_covariances_identical_and_shifted():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(16, 64))  # n < d: rank-deficient covariance
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.zeros(64)
    shift[0] = 3.0
    assert frechet_distance(a, a + shift) == pytest.approx(9.0, rel=1e-6)
    assert frechet_distance(a, rng.normal(size=(16, 64))) > 1.0


def test_diversity_is_half_mean_pairwise_distance_of_normalised_features():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 8))
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairwise = ((e[:, None] - e[None]) ** 2).sum(-1)
    mean_pairwise = pairwise.sum() / (16 * 15)
    assert diversity(x) == pytest.approx(mean_pairwise / 2)
    assert diversity(np.repeat(x[:1], 5, axis=0)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        diversity(x[:1])
