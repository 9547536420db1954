import numpy as np
import pytest
import torch
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


def test_fd_of_a_scaled_copy_has_its_closed_form_with_fewer_samples_than_dimensions():
    # b = s a: mean s m, covariance s^2 C, so FD = (1 - s)^2 (|m|^2 + tr C), C of rank < d
    rng = np.random.default_rng(3)
    a = rng.normal(size=(16, 100)) + 0.5
    mean, cov = a.mean(0), np.cov(a, rowvar=False)
    for scale in (0.5, 2.0):
        expected = (1 - scale) ** 2 * (mean @ mean + np.trace(cov))
        assert frechet_distance(a, scale * a) == pytest.approx(expected, rel=1e-6)


def test_step_metrics_identical_images_and_collapse():
    import torch

    from vggflow.metrics.evaluate import step_metrics

    torch.manual_seed(0)
    varied = torch.rand(2, 16, 3, 4, 4)  # (prompts, images, C, H, W)
    collapsed = varied.mean(1, keepdim=True).expand_as(varied).clone()
    halfway = 0.5 * (varied + collapsed)
    extractors = {"pixels": lambda images: images.flatten(1),
                  "halfpixels": lambda images: images.flatten(1)[:, :24]}

    def metrics(images):
        return step_metrics(images, varied, ["a", "b"], {}, extractors, lambda prompt: None)

    same = metrics(varied)
    assert same["fd_prior_pixels"] == pytest.approx(0.0, abs=1e-8)
    assert set(same) == {"diversity_pixels", "fd_prior_pixels", "diversity_halfpixels",
                         "fd_prior_halfpixels"}
    assert metrics(collapsed)["diversity_pixels"] == pytest.approx(0.0, abs=1e-12)
    assert 0 < metrics(halfway)["diversity_pixels"] < same["diversity_pixels"]
    assert metrics(halfway)["fd_prior_pixels"] > 0


def test_eight_bit_storage_of_evaluation_images_round_trips_within_half_a_level():
    """``eval.image_dtype: uint8`` stores round(255 x); read back as float32 in [0, 1] within
    1/510 of the original, levels exact; float32 storage is the identity."""
    from vggflow.sampling import images_for_storage, stored_images_as_float

    images = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    images[0, 0, 0, 0, :2] = torch.tensor([0.0, 1.0])
    stored = images_for_storage(images, "uint8")
    assert stored.dtype == torch.uint8
    back = stored_images_as_float(stored)
    assert back.dtype == torch.float32 and (back - images).abs().max() <= 0.5 / 255 + 1e-7
    assert back[0, 0, 0, 0, :2].tolist() == [0.0, 1.0]
    assert torch.equal(images_for_storage(back, "uint8"), stored)
    assert torch.equal(stored_images_as_float(images_for_storage(images, "float32")), images)


def test_metric_rows_are_written_as_pandas_writes_them(tmp_path):
    """The train job writes its metrics without importing pandas (0.6 s per process): the same
    bytes as ``DataFrame.to_csv(index=False)``, NaN as an empty field, float32 as float64."""
    import pandas as pd

    from vggflow.metrics.evaluate import write_rows_csv

    values = [0.1, 1e-17, 3.0, float("nan"), 12345678.91011, np.float32(3.1), 1e300, -2.5e-5]
    rows = [{"reward": "margin", "method": "vggflow", "seed": 2, "step": 25 * i,
             "metric": f"metric_{i}", "value": value} for i, value in enumerate(values)]
    write_rows_csv(rows, tmp_path / "ours.csv")
    pd.DataFrame(rows).to_csv(tmp_path / "pandas.csv", index=False)
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    assert ",metric_3,\n" in (tmp_path / "ours.csv").read_text()
