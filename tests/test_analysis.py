import numpy as np
import pandas as pd
import pytest

from vggflow.analysis.plots import convergence
from vggflow.analysis.style import METHOD_ORDER, PALETTE, ordered_methods
from vggflow.analysis.sweep import settings_table, winner_overrides
from vggflow.analysis.tables import collect, summary, write_tables
from vggflow.config import sweep_grid, sweep_overrides, sweep_variants


def fixture_metrics() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method in ("refl", "vggflow"):
        for seed in range(3):
            for step in (0, 5, 10):
                for metric in ("reward_margin", "reward_thickness", "diversity_evalnet",
                               "fd_prior_evalnet"):
                    value = 1.0 if step == 0 else rng.normal(2.0 + step, 0.1)
                    rows.append({"reward": "margin", "method": method, "seed": seed,
                                 "step": step, "metric": metric, "value": value})
    return collect([pd.DataFrame(rows)])


def test_summary_has_base_row_and_last_step_stats():
    table = summary(fixture_metrics())
    assert list(table.columns) == ["reward", "method", "metric", "step", "mean", "std", "seeds"]
    assert ordered_methods(table["method"]) == ["base", "vggflow", "refl"]
    base = table[table["method"] == "base"]
    assert (base["mean"] == 1.0).all() and (base["std"] == 0.0).all() and (base["step"] == 0).all()
    last = table[(table["method"] == "vggflow") & (table["metric"] == "reward_margin")].iloc[0]
    assert last["step"] == 10 and last["seeds"] == 3 and abs(last["mean"] - 12.0) < 0.3


def test_tables_and_figure_files(tmp_path):
    data = fixture_metrics()
    write_tables(data, tmp_path / "t.csv", tmp_path / "t.md")
    markdown = (tmp_path / "t.md").read_text()
    assert "| Base model | 0 |" in markdown and "VGG-Flow" in markdown and " ± " in markdown
    convergence(data, "margin", tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "c.pdf").exists()


def test_every_ordered_method_has_a_colour():
    assert set(METHOD_ORDER) == set(PALETTE)


def test_compute_table_per_method(tmp_path):
    from vggflow.analysis.tables import compute_table, write_compute_table

    def log(seconds, memory):
        return pd.DataFrame({"step": [1, 2, 4], "elapsed_s": [seconds, 2 * seconds, 4 * seconds],
                             "peak_memory_mb": [memory - 1, memory, memory]})

    runs = [{"reward": "margin", "method": m, "seed": s}
            for m in ("refl", "vggflow") for s in (0, 1)]
    table = compute_table([log(0.1, 700), log(0.3, 710), log(1.0, 900), log(1.0, 905)], runs)
    assert table["method"].tolist() == ["vggflow", "refl"]
    refl = table.set_index("method").loc["refl"]
    assert refl["seconds_per_update"] == pytest.approx(0.2)
    assert refl["peak_memory_mb"] == 710 and refl["runs"] == 2 and refl["updates"] == 4
    write_compute_table(table, tmp_path / "m.csv", tmp_path / "m.md")
    assert "| VGG-Flow | 2 | 4 | 1.000 ± 0.000 | 905 |" in (tmp_path / "m.md").read_text()
    # the jobs' benchmark tables add host wall time (mean), their processes' peak RSS the
    # memory (max); None: not known
    jobs = [pd.DataFrame({"s": [wall], "max_rss": [1.0]}) for wall in (10.0, 20.0, 30.0)] + [None]
    host = compute_table([log(0.1, 700), log(0.3, 710), log(1.0, 900), log(1.0, 905)], runs,
                         benchmarks=jobs, job_peak_rss_mb=[800.0, 820.0, None, 990.0]
                         ).set_index("method")
    assert host.loc["refl", "job_wall_s"] == pytest.approx(15.0)
    assert host.loc["refl", "job_max_rss_mb"] == 820
    assert host.loc["vggflow", "job_wall_s"] == pytest.approx(30.0)  # the unknown job is skipped
    assert host.loc["vggflow", "job_max_rss_mb"] == 990


def sweep_metrics(settings: dict[str, tuple[float, ...]]) -> pd.DataFrame:
    """One refl setting per entry: variant -> final (reward, diversity, fd_prior); base
    (1.0, 0.4, 0.0); fd_prior defaults to 10."""
    rows = []
    for variant, final in settings.items():
        final = (*final, 10.0) if len(final) == 2 else final
        for seed in (0, 1):
            for step, values in ((0, (1.0, 0.4, 0.0)), (10, final)):
                for metric, value in zip(("reward_margin", "diversity_evalnet",
                                          "fd_prior_evalnet"), values):
                    rows.append({"variant": variant, "reward": "margin", "method": "refl",
                                 "seed": seed, "step": step, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def test_sweep_winner_is_the_best_reward_that_keeps_diversity():
    data = sweep_metrics({"lr=0.001": (9.0, 0.05), "lr=0.0003": (5.0, 0.3),
                          "lr=0.0001": (2.0, 0.39)})
    table = settings_table(data, min_diversity_ratio=0.5).set_index("variant")
    assert table.loc["lr=0.0003", "winner"] and table["winner"].sum() == 1
    assert not table.loc["lr=0.001", "qualified"]
    assert table.loc["lr=0.0003", "diversity_ratio"] == pytest.approx(0.75)
    assert winner_overrides(table.reset_index()) == {
        "refl": {"per_reward": {"margin": {"lr": 0.0003}}}}


def test_the_sweep_judges_collapse_in_the_same_metric_as_the_checkpoint_selection():
    """With several feature networks the sweep's limits use the metric the selection and Table 1
    use (DreamSim before CLIP): a setting whose DreamSim diversity collapsed does not win on its
    CLIP diversity, nor pass the fd_prior limit on CLIP's."""
    data = sweep_metrics({"lr=0.001": (9.0, 0.05, 900.0), "lr=0.0003": (5.0, 0.3, 100.0)})
    data["metric"] = data["metric"].str.replace("_evalnet", "_dreamsim")
    clip = data[data["metric"] != "reward_margin"].copy()
    clip["metric"] = clip["metric"].str.replace("_dreamsim", "_clip")
    clip.loc[clip["step"] > 0, "value"] = clip["value"].where(
        ~clip["metric"].str.startswith("diversity"), 0.35).where(
        ~clip["metric"].str.startswith("fd_prior"), 50.0)
    table = settings_table(pd.concat([data, clip]), 0.5, max_fd_prior=250.0).set_index("variant")
    assert not table.loc["lr=0.001", "qualified"] and table.loc["lr=0.0003", "winner"]


def test_a_setting_far_from_the_prior_does_not_qualify_when_fd_prior_is_limited():
    data = sweep_metrics({"lr=0.001": (9.0, 0.5, 900.0), "lr=0.0003": (5.0, 0.3, 100.0)})
    assert settings_table(data, 0.5).set_index("variant").loc["lr=0.001", "winner"]
    table = settings_table(data, 0.5, max_fd_prior=250.0).set_index("variant")
    assert not table.loc["lr=0.001", "qualified"] and table.loc["lr=0.0003", "winner"]


def test_a_diverged_setting_never_wins():
    data = sweep_metrics({"lr=0.01": (9.0, 0.4), "lr=0.001": (5.0, 0.3)})
    data = data[~((data["variant"] == "lr=0.01") & (data["seed"] == 1) & (data["step"] == 10))]
    table = settings_table(data, min_diversity_ratio=0.5).set_index("variant")
    assert table.loc["lr=0.01", "diverged"] and not table.loc["lr=0.01", "qualified"]
    assert table.loc["lr=0.001", "winner"]


def test_sweep_falls_back_to_the_most_diverse_setting_when_all_collapse():
    data = sweep_metrics({"lr=0.001": (9.0, 0.01), "lr=0.0003": (5.0, 0.1)})
    table = settings_table(data, min_diversity_ratio=0.5).set_index("variant")
    assert not table["qualified"].any()
    assert table.loc["lr=0.0003", "winner"] and table["winner"].sum() == 1


def test_sweep_grid_names_every_combination_and_per_reward_lists_replace_the_grid():
    sweep = {"grid": {"adjoint_matching": {"lr": [1e-4, 3e-4], "reward_scale": [1.0]}},
             "per_reward": {"margin": {"adjoint_matching": {"reward_scale": [0.5, 2.0]}}}}
    assert sweep_variants(sweep_grid(sweep, "adjoint_matching", "thickness")) == {
        "lr=0.0001+reward_scale=1": {"lr": 1e-4, "reward_scale": 1.0},
        "lr=0.0003+reward_scale=1": {"lr": 3e-4, "reward_scale": 1.0}}
    for name, overrides in sweep_variants(sweep_grid(sweep, "adjoint_matching", "margin")).items():
        assert sweep_overrides(name) == overrides  # the names parse back
    assert list(sweep_variants(sweep_grid(sweep, "adjoint_matching", "margin"))) == [
        "lr=0.0001+reward_scale=0.5", "lr=0.0001+reward_scale=2",
        "lr=0.0003+reward_scale=0.5", "lr=0.0003+reward_scale=2"]
