"""Checkpoint selection, budgets and the paper-layout table on synthetic metrics with known
answers: 2 trained rewards, the base model (step 0) + 3 methods, 2 seeds, steps 0/5/10."""

import math

import numpy as np
import pandas as pd
import pytest

from vggflow.analysis.selection import (
    COLLAPSED,
    QUALIFIED,
    choose_metric,
    select_checkpoints,
)
from vggflow.analysis.tables import (
    budget_steps,
    compute_table,
    paper_latex,
    paper_markdown,
    paper_table,
    reference_rows,
    reward_cost_table,
    write_paper_tables,
    write_reward_cost_table,
)
from vggflow.analysis.times import training_times

REWARDS = ("aesthetic", "hpsv2")
METHODS = ("vggflow", "refl", "draft")
BASE_VALUES = (1.0, 0.4, 0.0)  # (trained reward, diversity_dreamsim, fd_prior_inception)
# seed 0's (trained reward, diversity, fd_prior) at steps 5 and 10; seed 1 adds 0.5 to the reward.
# With min_diversity_ratio 0.8 (diversity >= 0.32): vggflow keeps both, refl collapses at 10,
# draft at both.
RUNS = {
    "vggflow": {5: (2.0, 0.38, 10.0), 10: (3.0, 0.36, 20.0)},
    "refl": {5: (2.5, 0.35, 30.0), 10: (4.0, 0.10, 80.0)},
    "draft": {5: (3.0, 0.20, 50.0), 10: (5.0, 0.05, 90.0)},
}


def synthetic_metrics(drop: tuple = ()) -> pd.DataFrame:
    """The long metrics table; ``drop`` lists (reward, method, step) evaluations to leave out.
    Decoys: ``diversity_lite0`` (0.9) and ``fd_prior_lite0`` (1000) must not be chosen over the
    DreamSim / Inception metrics; the other reward is cross-evaluated at 7.0."""
    rows = []
    for reward in REWARDS:
        other = next(r for r in REWARDS if r != reward)
        for method in METHODS:
            for seed in (0, 1):
                for step in (0, 5, 10):
                    if (reward, method, step) in drop:
                        continue
                    value, diversity, fd = BASE_VALUES if step == 0 else RUNS[method][step]
                    value += 0.5 * seed * (step > 0)
                    metrics = {f"reward_{reward}": value, f"reward_{other}": 7.0,
                               "diversity_dreamsim": diversity, "diversity_lite0": 0.9,
                               "fd_prior_inception": fd, "fd_prior_lite0": 1000.0}
                    rows += [{"reward": reward, "method": method, "seed": seed, "step": step,
                              "metric": metric, "value": v} for metric, v in metrics.items()]
    return pd.DataFrame(rows)


def steps_of(steps: pd.DataFrame, reward: str = "aesthetic") -> dict:
    block = steps[steps["reward"] == reward]
    return {(row.method, row.seed): row.step for row in block.itertuples()}


def test_selection_picks_the_best_qualifying_checkpoint_or_the_base_model():
    chosen = select_checkpoints(synthetic_metrics(), min_diversity_ratio=0.8, max_fd_prior=None)
    assert list(chosen.columns) == ["reward", "method", "seed", "step", "rule"]
    assert len(chosen) == len(REWARDS) * len(METHODS) * 2
    for reward in REWARDS:
        assert steps_of(chosen, reward) == {("vggflow", 0): 10, ("vggflow", 1): 10,
                                            ("refl", 0): 5, ("refl", 1): 5,
                                            ("draft", 0): 0, ("draft", 1): 0}
    rules = chosen.set_index(["method"])["rule"]
    assert set(rules["draft"]) == {COLLAPSED} and set(rules["vggflow"]) == {QUALIFIED}


def test_selection_respects_max_fd_prior_and_the_ratio():
    chosen = select_checkpoints(synthetic_metrics(), 0.8, max_fd_prior=15.0)
    assert steps_of(chosen) == {("vggflow", 0): 5, ("vggflow", 1): 5, ("refl", 0): 0,
                                ("refl", 1): 0, ("draft", 0): 0, ("draft", 1): 0}
    loose = select_checkpoints(synthetic_metrics(), min_diversity_ratio=0.1, max_fd_prior=None)
    assert steps_of(loose) == {(m, s): 10 for m in METHODS for s in (0, 1)}


def test_metric_choice_prefers_dreamsim_and_inception_and_fails_clearly():
    metrics = synthetic_metrics()
    assert choose_metric(metrics, "diversity") == "diversity_dreamsim"
    assert choose_metric(metrics, "fd_prior") == "fd_prior_inception"
    lite = metrics[~metrics["metric"].isin(["diversity_dreamsim", "fd_prior_inception"])]
    assert choose_metric(lite, "diversity") == "diversity_lite0"
    with pytest.raises(ValueError, match="no diversity_"):
        select_checkpoints(metrics[~metrics["metric"].str.startswith("diversity_")], 0.8, None)
    with pytest.raises(ValueError, match="not in the metrics"):
        choose_metric(metrics, "fd_prior", "fd_prior_clip")


def test_budget_last_and_matched_updates():
    metrics = synthetic_metrics(drop={("aesthetic", "draft", 10)})
    last = budget_steps(metrics, budget="last")
    assert steps_of(last)[("draft", 0)] == 5 and steps_of(last)[("vggflow", 1)] == 10
    matched = budget_steps(metrics, budget="updates")
    assert list(matched.columns) == ["reward", "method", "seed", "step"]
    assert set(steps_of(matched, "aesthetic").values()) == {5}
    assert set(steps_of(matched, "hpsv2").values()) == {10}
    with pytest.raises(ValueError, match="unknown budget"):
        budget_steps(metrics, budget="epochs")
    with pytest.raises(ValueError, match="training times"):
        budget_steps(metrics, budget="gpu_hours")


def test_budget_matched_gpu_hours():
    # seconds per update: refl is the cheapest (5 and 6 s: mean total 55 s at update 10)
    rate = {("vggflow", 0): 10, ("vggflow", 1): 10, ("refl", 0): 5, ("refl", 1): 6,
            ("draft", 0): 20, ("draft", 1): 20}
    runs = [{"reward": r, "method": m, "seed": s} for r in REWARDS for m in METHODS for s in (0, 1)]
    logs = [pd.DataFrame({"step": np.arange(2, 11, 2),  # logged every 2: step 5 interpolated
                          "elapsed_s": rate[(run["method"], run["seed"])] * np.arange(2, 11, 2.0),
                          "processes": 2})  # GPUs per run, from the training log
            for run in runs]
    times = training_times(logs, runs)
    assert (times[times["step"] == 0]["elapsed_s"] == 0).all()
    chosen = budget_steps(synthetic_metrics(), times, budget="gpu_hours")
    # vggflow 50 s at 5, draft 100 s at 5 > 55, refl seed 1 60 s at 10 > 55
    assert steps_of(chosen) == {("vggflow", 0): 5, ("vggflow", 1): 5, ("refl", 0): 10,
                                ("refl", 1): 5, ("draft", 0): 0, ("draft", 1): 0}
    hours = chosen.set_index(["reward", "method", "seed"])["gpu_hours"]
    assert hours["aesthetic", "vggflow", 0] == pytest.approx(50 * 2 / 3600)
    assert hours["aesthetic", "refl", 1] == pytest.approx(30 * 2 / 3600)
    # GPU-seconds are matched: draft on 1 GPU (100 s at 5, 200 s at 10) against refl's 110
    # GPU-seconds reaches update 5, which it did not on 2 GPUs
    for log, run in zip(logs, runs):
        log["processes"] = 1 if run["method"] == "draft" else 2
    chosen = budget_steps(synthetic_metrics(), training_times(logs, runs), budget="gpu_hours")
    assert steps_of(chosen)[("draft", 0)] == 5
    hours = chosen.set_index(["reward", "method", "seed"])["gpu_hours"]
    assert hours["aesthetic", "draft", 0] == pytest.approx(100 / 3600)


def test_compute_table_gpu_hours():
    logs = [pd.DataFrame({"step": [1, 2], "elapsed_s": [s / 2, s], "peak_memory_mb": [1, 2],
                          "processes": 4}) for s in (3600.0, 7200.0)]
    runs = [{"reward": "aesthetic", "method": "vggflow", "seed": s} for s in (0, 1)]
    assert compute_table([log.drop(columns="processes") for log in logs], runs).iloc[0][
        "gpu_hours"] == pytest.approx(1.5)  # an older log without the column: one process
    row = compute_table(logs, runs).iloc[0]
    assert row["gpu_hours"] == pytest.approx(6.0)
    assert row["gpu_hours_std"] == pytest.approx(math.sqrt(8.0))
    assert row["seconds_per_update"] == pytest.approx(2700.0) and row["runs"] == 2


def selected_table() -> pd.DataFrame:
    metrics = synthetic_metrics()
    return paper_table(metrics, select_checkpoints(metrics, 0.8, None))


def test_paper_table_mean_std_exact():
    table = selected_table()
    assert table["method"].drop_duplicates().tolist() == ["base", "vggflow", "refl", "draft"]
    cells = table.set_index(["reward", "method", "quantity"]).sort_index()
    vgg = cells.loc[("aesthetic", "vggflow", "reward")]
    assert vgg["metric"] == "reward_aesthetic"
    assert vgg["mean"] == pytest.approx(3.25) and vgg["std"] == pytest.approx(math.sqrt(0.125))
    assert (vgg["seeds"], vgg["step_min"], vgg["step_max"]) == (2, 10, 10)
    refl = cells.loc[("hpsv2", "refl")]
    assert refl.loc["reward", "mean"] == pytest.approx(2.75)
    assert refl.loc["diversity", "metric"] == "diversity_dreamsim"
    assert refl.loc["diversity", "mean"] == pytest.approx(0.35)
    assert refl.loc["fd_prior", "metric"] == "fd_prior_inception"
    assert refl.loc["fd_prior", "mean"] == pytest.approx(30.0)
    base = cells.loc[("aesthetic", "base")]
    assert base["mean"][["reward", "diversity", "fd_prior"]].tolist() == pytest.approx(
        list(BASE_VALUES))
    assert (base["std"] == 0).all() and (base["step_max"] == 0).all() and (base["seeds"] == 2).all()
    with pytest.raises(ValueError, match="no metrics"):
        paper_table(synthetic_metrics(), pd.DataFrame(
            [{"reward": "aesthetic", "method": "refl", "seed": 0, "step": 7}]))


def test_paper_table_carries_gpu_hours_and_step_ranges():
    metrics = synthetic_metrics()
    steps = select_checkpoints(metrics, 0.8, None)
    steps.loc[(steps["method"] == "vggflow") & (steps["seed"] == 1), "step"] = 5
    steps["gpu_hours"] = steps["step"] * 0.1
    cells = paper_table(metrics, steps).set_index(["reward", "method", "quantity"])
    vgg = cells.loc[("aesthetic", "vggflow", "reward")]
    assert (vgg["step_min"], vgg["step_max"]) == (5, 10)
    assert vgg["mean"] == pytest.approx((3.0 + 2.5) / 2) and vgg["gpu_hours"] == pytest.approx(0.75)
    assert cells.loc[("aesthetic", "base", "reward"), "gpu_hours"] == 0.0


def test_latex_has_booktabs_escapes_and_bold_best():
    latex = paper_latex(selected_table(), "Selected by fd_prior & diversity")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-5}"):
        assert rule in latex
    assert r"\caption{Selected by fd\_prior \& diversity}" in latex
    assert r"\texttt{diversity\_dreamsim}" in latex and "_dreamsim" not in latex.replace(
        r"\_dreamsim", "")
    assert r"\multicolumn{4}{c}{Aesthetic} & \multicolumn{4}{c}{HPSv2}" in latex
    # best finetuned reward: VGG-Flow; best diversity and FID: DRaFT (collapsed: the base model)
    assert (r"VGG-Flow & \textbf{3.250 $\pm$ 0.354} & 0.3600 $\pm$ 0.0000 & 20.00 $\pm$ 0.00 & 10"
            in latex)
    assert r"ReFL & 2.750 $\pm$ 0.354 & 0.3500 $\pm$ 0.0000 & 30.00 $\pm$ 0.00 & 5 & " in latex
    assert (r"DRaFT & 1.000 $\pm$ 0.000 & \textbf{0.4000 $\pm$ 0.0000} & \textbf{0.00 $\pm$ 0.00}"
            r" & 0 & " in latex)
    assert r"Base model & 1.000 $\pm$ 0.000 & 0.4000 $\pm$ 0.0000 & 0.00 $\pm$ 0.00 & 0" in latex
    assert "published (paper)" not in latex and "FID $\\downarrow$" in latex


def test_reference_rows_and_published_block(tmp_path):
    published = reference_rows()
    assert published["method"].nunique() == 6
    cells = published.set_index(["reward", "method", "quantity"])
    assert cells.loc[("aesthetic", "vggflow", "reward"), "mean"] == pytest.approx(8.24)
    assert cells.loc[("aesthetic", "vggflow", "diversity"), "mean"] == pytest.approx(0.2212)
    assert cells.loc[("hpsv2", "base", "reward"), "mean"] == pytest.approx(0.280)
    assert cells.loc[("pickscore", "refl", "fd_prior"), "mean"] == pytest.approx(997)
    table = selected_table()
    write_paper_tables(table, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex",
                       caption="Table 1", reference=True, eval_prompts=8, images_per_prompt=16)
    assert pd.read_csv(tmp_path / "t.csv").shape == table.shape
    markdown = (tmp_path / "t.md").read_text()
    assert markdown == paper_markdown(table, "Table 1", True, 8, 16)
    header = "| method | Aesthetic: reward ↑ | Aesthetic: diversity ↑ | Aesthetic: FID ↓ |"
    assert header in markdown
    assert "| *published (paper)* |" in markdown
    assert "| VGG-Flow (paper) | 8.24 ± 0.07 | 0.2212 ± 0.0017 | **375 ± 25** | 400 |" in markdown
    assert "| VGG-Flow | **3.250 ± 0.354** |" in markdown
    assert "8 evaluation prompts x 16 images per prompt" in markdown
    assert "ours DreamSim features" in markdown and "Inception-v3" in markdown
    latex = (tmp_path / "t.tex").read_text()
    assert r"\textit{published (paper)}" in latex and r"VGG-Flow-PMP & 7.52 $\pm$ 0.16" in latex


def test_reward_cost_table_by_hand(tmp_path):
    """Gain = trained reward at the last update - at update 0; cost = mean seconds / mean gain."""
    rows, times = [], []
    for method, finals, seconds in (("vggflow", (2.0, 3.0), (10.0, 20.0)),
                                    ("refl", (0.9, 0.9), (4.0, 4.0))):
        for seed, (final, elapsed) in enumerate(zip(finals, seconds)):
            for step, value in ((0, 1.0), (4, final)):
                rows.append(("margin", method, seed, step, "reward_margin", value))
                # another reward's score: must not count
                rows.append(("margin", method, seed, step, "reward_thickness", 100.0 * step))
                times.append(("margin", method, seed, step, elapsed * step / 4))
    metrics = pd.DataFrame(rows, columns=["reward", "method", "seed", "step", "metric", "value"])
    times = pd.DataFrame(times, columns=["reward", "method", "seed", "step", "elapsed_s"])
    table = reward_cost_table(metrics, times).set_index("method")
    assert list(table.index) == ["vggflow", "refl"]  # the fixed method order
    vgg = table.loc["vggflow"]
    assert vgg["reward_gain"] == pytest.approx(1.5)
    assert vgg["reward_gain_std"] == pytest.approx(2**-0.5)
    assert vgg["train_s"] == pytest.approx(15.0)
    assert vgg["seconds_per_update"] == pytest.approx(3.75)
    assert vgg["seconds_per_reward_unit"] == pytest.approx(10.0)
    assert table.loc["refl", "reward_gain"] == pytest.approx(-0.1)
    assert np.isnan(table.loc["refl", "seconds_per_reward_unit"])
    write_reward_cost_table(table.reset_index(), tmp_path / "c.csv", tmp_path / "c.md")
    markdown = (tmp_path / "c.md").read_text()
    assert "| margin | VGG-Flow | 4 | 1.5 ± 0.71 | 15 | 3.75 | 10 |" in markdown
    assert "| margin | ReFL | 4 | -0.1 ± 0 | 4 | 1 | no gain |" in markdown
    with pytest.raises(ValueError, match="no training time for margin/refl/seed1 at update 4"):
        reward_cost_table(metrics, times.drop(index=len(times) - 1))
