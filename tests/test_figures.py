"""The paper's figures on synthetic metrics, times and samples: files, plotted data, errors."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from vggflow.analysis.figures import (
    convergence_wallclock,
    method_grid,
    mosaic,
    pareto,
    sample_evolution,
    time_unit,
    wallclock_stats,
)
from vggflow.analysis.plots import convergence, tradeoff
from vggflow.analysis.style import PALETTE

METHODS = ("refl", "vggflow")
SECONDS_PER_STEP = {"refl": 20.0, "vggflow": 30.0}


def fake_metrics(variants=None) -> pd.DataFrame:
    """2 methods x 2 seeds x steps 0/5/10 trained on `margin`; step 0 (base) is seed-dependent."""
    rng = np.random.default_rng(0)
    rows = []
    for variant in variants or [None]:
        for method in METHODS:
            for seed in (0, 1):
                for step in (0, 5, 10):
                    for metric in ("reward_margin", "reward_thickness", "diversity_evalnet",
                                   "fd_prior_evalnet"):
                        value = 1.0 + seed if step == 0 else rng.normal(2.0 + step, 0.1)
                        row = {"reward": "margin", "method": method, "seed": seed, "step": step,
                               "metric": metric, "value": value}
                        rows.append(row if variant is None else {**row, "variant": variant})
    return pd.DataFrame(rows)


def fake_times(scale: float = 1.0, with_step0: bool = True) -> pd.DataFrame:
    """elapsed_s = step x seconds/step of the method x (1 + 0.1 seed) x scale."""
    return pd.DataFrame([
        {"reward": "margin", "method": m, "seed": s, "step": step,
         "elapsed_s": step * SECONDS_PER_STEP[m] * (1 + 0.1 * s) * scale}
        for m in METHODS for s in (0, 1) for step in ((0, 5, 10) if with_step0 else (5, 10))])


def fake_samples(channels: int, side: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"steps": [0, 5, 10], "prompts": ["a handwritten 3", "a handwritten 7"],
            "images": rng.random((3, 2, 4, channels, side, side), dtype=np.float32)}


def written(path) -> bool:
    return path.stat().st_size > 1000 and path.with_suffix(".pdf").stat().st_size > 1000


def line(fig, panel: int, name: str):
    """The data line labelled ``name`` in panel ``panel``, of an error-bar plot or a plain one."""
    ax = fig.axes[panel]
    bars = [c.lines[0] for c in ax.containers if c.get_label() == name]
    return next(iter(bars), None) or next(ln for ln in ax.get_lines() if ln.get_label() == name)


def test_wallclock_x_values_come_from_times(tmp_path):
    fig = convergence_wallclock(fake_metrics(), fake_times(), "margin", tmp_path / "w.png")
    assert written(tmp_path / "w.png")
    assert fig.axes[0].get_xlabel() == "training wall time (min)"
    # Mean over seeds 0 and 1 of step x 30 s x (1, 1.1), in minutes.
    expected = [0.0, 5 * 30 * 1.05 / 60, 10 * 30 * 1.05 / 60]
    np.testing.assert_allclose(line(fig, 0, "VGG-Flow").get_xdata(), expected)
    np.testing.assert_allclose(line(fig, 0, "ReFL").get_xdata()[-1], 10 * 20 * 1.05 / 60)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["reward_margin", "diversity_evalnet", "fd_prior_evalnet"]


def test_wallclock_stats_fill_step0_and_reject_untimed_steps():
    stats = wallclock_stats(fake_metrics(), fake_times(with_step0=False), "margin")
    at = stats.set_index(["method", "metric", "step"])
    assert at.loc[("refl", "reward_margin", 0), "x"] == 0.0
    assert at.loc[("refl", "reward_margin", 5), "x"] == pytest.approx(5 * 20 * 1.05)
    assert at.loc[("refl", "reward_margin", 0), "std"] == pytest.approx(np.std([1, 2], ddof=1))
    times = fake_times()
    times = times[~((times["method"] == "vggflow") & (times["step"] == 10))]
    with pytest.raises(ValueError, match="no elapsed_s"):
        wallclock_stats(fake_metrics(), times, "margin")
    with pytest.raises(ValueError, match="lack column"):
        wallclock_stats(fake_metrics(), times.drop(columns="elapsed_s"), "margin")


def test_time_unit_by_range():
    assert time_unit(90) == (1.0, "s")
    assert time_unit(600) == (60.0, "min")
    assert time_unit(5 * 3600) == (3600.0, "h")


def test_unknown_reward_raises(tmp_path):
    with pytest.raises(ValueError, match="no metrics for reward 'hpsv2'"):
        convergence_wallclock(fake_metrics(), fake_times(), "hpsv2", tmp_path / "w.png")
    with pytest.raises(ValueError, match="no metrics for reward 'hpsv2'"):
        pareto(fake_metrics(), "hpsv2", tmp_path / "p.png")
    assert not (tmp_path / "w.png").exists()


def test_pareto_starts_from_base_and_plots_seed_means(tmp_path):
    data = fake_metrics()
    fig = pareto(data, "margin", tmp_path / "p.png")
    assert written(tmp_path / "p.png")
    assert [ax.get_xlabel() for ax in fig.axes] == ["diversity_evalnet", "fd_prior_evalnet"]
    assert fig.axes[0].get_ylabel() == "reward_margin"
    means = data[data["method"] == "vggflow"].groupby(["step", "metric"])["value"].mean()
    vgg = line(fig, 0, "VGG-Flow")
    np.testing.assert_allclose(vgg.get_xdata().astype(float),
                               means.xs("diversity_evalnet", level="metric"))
    np.testing.assert_allclose(vgg.get_ydata().astype(float),
                               means.xs("reward_margin", level="metric"))
    base = line(fig, 1, "Base model")
    assert base.get_xdata()[0] == pytest.approx(1.5) and base.get_ydata()[0] == pytest.approx(1.5)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["VGG-Flow", "ReFL", "Base model"]


def test_pareto_one_curve_per_variant_and_needs_tradeoff_metrics(tmp_path):
    data = fake_metrics(variants=["beta_x0.5", "beta_x5"])
    fig = pareto(data, "margin", tmp_path / "v.png")
    assert written(tmp_path / "v.png")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["VGG-Flow: beta_x0.5", "VGG-Flow: beta_x5", "ReFL: beta_x0.5",
                      "ReFL: beta_x5", "Base model"]
    curves = [line(fig, 0, name) for name in legend[:4]]
    colours = [PALETTE["vggflow"]] * 2 + [PALETTE["refl"]] * 2
    assert [to_hex(c.get_color()) for c in curves] == colours
    assert [c.get_marker() for c in curves] == ["o", "s", "o", "s"]
    only_rewards = data[data["metric"].str.startswith("reward_")]
    with pytest.raises(ValueError, match="diversity_"):
        pareto(only_rewards, "margin", tmp_path / "x.png")


def test_plots_keep_their_signatures(tmp_path):
    fig = convergence(fake_metrics(), "margin", tmp_path / "c.png")
    assert written(tmp_path / "c.png")
    np.testing.assert_allclose(line(fig, 0, "ReFL").get_xdata(), [0, 5, 10])
    single = fake_metrics(variants=["a", "b"])
    fig = tradeoff(single[single["method"] == "vggflow"], tmp_path / "t.png")
    assert written(tmp_path / "t.png")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b", "Base model"]
    assert to_hex(line(fig, 0, "a").get_color()) != to_hex(line(fig, 0, "b").get_color())


def mosaic_shape(rows, columns, side):
    gap = max(1, side // 8)
    return rows * (side + gap) - gap, columns * (side + gap) - gap


def assert_tile(grid, row, column, expected):
    """The (row, column) tile of a mosaic is the (C, H, W) image ``expected``."""
    side = expected.shape[-1]
    gap = max(1, side // 8)
    top, left = row * (side + gap), column * (side + gap)
    expected = expected[0] if expected.shape[0] == 1 else expected.transpose(1, 2, 0)
    np.testing.assert_allclose(grid[top:top + side, left:left + side], expected, rtol=1e-6)


def test_mosaic_lays_tiles_out_with_white_gaps():
    tiles = np.zeros((2, 3, 1, 8, 8), dtype=np.uint8)
    tiles[1, 2] = 255
    grid = mosaic(tiles)
    assert grid.shape == mosaic_shape(rows=2, columns=3, side=8) == (17, 26)
    assert grid[9:, 18:].min() == 1.0 and grid[:8, :8].max() == 0.0  # uint8 levels to [0, 1]
    assert (grid[8] == 1.0).all() and (grid[:, 8] == 1.0).all()  # the gaps
    assert grid.sum() == 17 * 26 - 6 * 64 + 64
    rgb = mosaic(np.full((1, 2, 3, 16, 16), 0.5, dtype=np.float32))
    assert rgb.shape == (16, 34, 3) and (rgb[:, 16:18] == 1.0).all()


@pytest.mark.parametrize("channels,side", [(1, 8), (3, 16)])
def test_sample_evolution(tmp_path, channels, side):
    samples = fake_samples(channels, side)
    fig = sample_evolution(samples, tmp_path / "e.png", prompt_index=1, image_indices=(0, 2, 3))
    assert written(tmp_path / "e.png")
    (ax,) = fig.axes  # one mosaic: rows are the noise seeds, columns the checkpoints
    assert [t.get_text() for t in ax.get_xticklabels()] == ["step 0", "step 5", "step 10"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["noise 0", "noise 2", "noise 3"]
    assert fig.get_suptitle() == "a handwritten 7"
    shown = ax.images[0]
    assert shown.get_interpolation() == "nearest"
    if channels == 1:
        assert shown.get_cmap().name == "gray"
    # row 1 (noise 2), column 2 (step 10)
    assert_tile(shown.get_array(), row=1, column=2, expected=samples["images"][2, 1, 2])


def test_sample_evolution_rejects_bad_indices(tmp_path):
    samples = fake_samples(1, 8)
    with pytest.raises(ValueError, match="prompt index"):
        sample_evolution(samples, tmp_path / "e.png", prompt_index=2)
    with pytest.raises(ValueError, match="image indices"):
        sample_evolution(samples, tmp_path / "e.png", image_indices=(0, 4))
    with pytest.raises(ValueError, match=r"\(S, P, n, C, H, W\)"):
        sample_evolution({**samples, "images": samples["images"][:, :, :, :, 0]},
                         tmp_path / "e.png")


@pytest.mark.parametrize("channels,side", [(1, 8), (3, 16)])
def test_method_grid(tmp_path, channels, side):
    samples = {"vggflow": fake_samples(channels, side, 1), "refl": fake_samples(channels, side, 2)}
    steps = {"refl": 5, "base": 0, "vggflow": 10}
    rewards = {"refl": 3.0, "base": 1.0, "vggflow": 4.25}
    fig = method_grid(samples, steps, rewards, tmp_path / "g.png", images_per_prompt=3)
    assert written(tmp_path / "g.png")
    titles = [ax.get_title() for ax in fig.axes]  # one mosaic per method
    assert titles == ["Base model\nstep 0, reward 1", "VGG-Flow\nstep 10, reward 4.25",
                      "ReFL\nstep 5, reward 3"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a handwritten 3",
                                                                     "a handwritten 7"]
    assert [len(ax.get_yticklabels()) for ax in fig.axes[1:]] == [0, 0]
    refl = fig.axes[2].images[0].get_array()
    assert refl.shape[:2] == mosaic_shape(rows=2, columns=3, side=side)
    # prompt 1, image 1, at step 5
    assert_tile(refl, row=1, column=1, expected=samples["refl"]["images"][1, 1, 1])
    base = fig.axes[0].images[0].get_array()  # the base block is step 0 of the first samples
    assert_tile(base, row=0, column=0, expected=samples["vggflow"]["images"][0, 0, 0])


def test_method_grid_rejects_bad_inputs(tmp_path):
    samples = {"vggflow": fake_samples(1, 8)}
    path = tmp_path / "g.png"
    with pytest.raises(ValueError, match="not a sampled checkpoint"):
        method_grid(samples, {"vggflow": 7}, {"vggflow": 1.0}, path)
    with pytest.raises(ValueError, match="no mean reward"):
        method_grid(samples, {"vggflow": 5}, {}, path)
    with pytest.raises(ValueError, match="no samples for method 'refl'"):
        method_grid(samples, {"vggflow": 5, "refl": 5}, {"vggflow": 1.0, "refl": 1.0}, path)
    with pytest.raises(ValueError, match="prompt indices"):
        method_grid(samples, {"vggflow": 5}, {"vggflow": 1.0}, path, prompt_indices=[0, 2])
    with pytest.raises(ValueError, match="images_per_prompt"):
        method_grid(samples, {"vggflow": 5}, {"vggflow": 1.0}, path, images_per_prompt=5)
    other = {**fake_samples(1, 8), "prompts": ["x", "y"]}
    with pytest.raises(ValueError, match="other prompts"):
        method_grid({**samples, "refl": other}, {"vggflow": 5, "refl": 5},
                    {"vggflow": 1.0, "refl": 1.0}, path)
    assert not path.exists()


def test_paper_theme_is_seaborns_without_importing_it():
    """Figures get seaborn's paper theme from PAPER_THEME (seaborn's import costs 2-3 s per figure
    job): the same rcParams as sns.set_theme sets, colour cycle included, and a figure made in a
    fresh process does not import seaborn."""
    import subprocess
    import sys

    import matplotlib
    import seaborn as sns

    from vggflow.analysis.plots import _pyplot

    def theme(apply) -> dict:
        with matplotlib.rc_context():
            matplotlib.rcdefaults()
            apply()
            params = dict(matplotlib.rcParams)
        params["axes.prop_cycle"] = [to_hex(c) for c in params["axes.prop_cycle"].by_key()["color"]]
        return params

    want = theme(lambda: sns.set_theme(context="paper", style="whitegrid", font_scale=1.1))
    got = theme(_pyplot)
    defaults = theme(lambda: None)
    # not the theme's: the backend (_pyplot picks Agg) and seaborn's own default colour map
    changed = {key for key in want if want[key] != defaults[key]} - {"backend", "image.cmap"}
    assert len(changed) > 30
    assert {key: got[key] for key in changed} == {key: want[key] for key in changed}
    fresh = ("import sys; from vggflow.analysis.plots import _pyplot; "
             "_pyplot().subplots(); print('seaborn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
