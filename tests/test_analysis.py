import numpy as np
import pandas as pd
import pytest

from vggflow.analysis.plots import convergence
from vggflow.analysis.style import METHOD_ORDER, PALETTE, ordered_methods
from vggflow.analysis.tables import collect, summary, write_tables


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
