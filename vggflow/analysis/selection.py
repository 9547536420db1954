"""Checkpoint selection: each run's best checkpoint without significant collapse (the paper's
early-stopped comparison, its Fig. 2), by one stated rule.

Rule, per run (trained reward, method, seed): among its evaluated checkpoints after the start
(step > 0), a checkpoint *qualifies* when its diversity is at least ``min_diversity_ratio`` times
the base model's (step 0 of the same trained reward and seed) and, when ``max_fd_prior`` is set,
its ``fd_prior`` is at most that (in the metric's own units). The selected checkpoint is the
qualifying one with the highest trained reward (``reward_<reward>``; ties: the earliest step).
When none qualifies, every checkpoint collapsed and the run is represented by the base model
(step 0). Checkpoints with a missing (NaN) value never qualify.
"""

from __future__ import annotations

import pandas as pd

RUN = ["reward", "method", "seed"]
QUALIFIED = "best_qualifying"
COLLAPSED = "all_collapsed"
# Feature backends in order of preference (the paper's first: DreamSim diversity, Inception FID).
PREFERENCE = {
    "diversity": ("dreamsim", "clip", "lite0", "evalnet", "points"),
    "fd_prior": ("inception", "clip", "lite0", "evalnet", "points"),
}


def choose_metric(metrics: pd.DataFrame, family: str, name: str | None = None) -> str:
    """The metric of ``family`` ("diversity" or "fd_prior") to use: ``name`` when given (it must
    be present), else the first present backend in ``PREFERENCE``, else the alphabetically first
    ``<family>_*`` metric. Raises ValueError when there is none.
    """
    present = set(metrics["metric"].unique())
    if name is not None:
        if name not in present:
            raise ValueError(f"metric {name!r} is not in the metrics table")
        return name
    preferred = [f"{family}_{backend}" for backend in PREFERENCE[family]]
    others = sorted(m for m in present if m.startswith(f"{family}_"))
    for metric in [*preferred, *others]:
        if metric in present:
            return metric
    raise ValueError(f"the metrics table has no {family}_* metric "
                     f"(looked for {', '.join(preferred)})")


def select_checkpoints(metrics: pd.DataFrame, min_diversity_ratio: float,
                       max_fd_prior: float | None, diversity_metric: str | None = None,
                       fd_metric: str | None = None) -> pd.DataFrame:
    """One row per run: reward, method, seed, step (the selected update; 0 = base model) and rule
    (``"best_qualifying"`` or ``"all_collapsed"``). See the module docstring for the rule.

    ``metrics``: the long table (reward, method, seed, step, metric, value). ``fd_metric`` is only
    needed (and chosen automatically when None) if ``max_fd_prior`` is set.
    """
    diversity = choose_metric(metrics, "diversity", diversity_metric)
    fd = choose_metric(metrics, "fd_prior", fd_metric) if max_fd_prior is not None else None
    wide = metrics.pivot_table(index=[*RUN, "step"], columns="metric", values="value",
                               aggfunc="mean").reset_index()
    base = (wide[wide["step"] == 0].groupby(["reward", "seed"])[diversity].mean()
            .rename("base_diversity").reset_index())
    wide = wide.merge(base, on=["reward", "seed"], how="left")
    if wide["base_diversity"].isna().any():
        runs = wide.loc[wide["base_diversity"].isna(), RUN].drop_duplicates()
        raise ValueError(f"no base-model (step 0) {diversity} for run(s) "
                         f"{runs.to_dict('records')}")
    rows = []
    for (reward, method, seed), run in wide.sort_values("step").groupby(RUN, sort=True):
        trained = f"reward_{reward}"
        if trained not in run.columns or run[trained].isna().all():
            raise ValueError(f"run {reward}/{method}/seed{seed} has no {trained} "
                             "(its trained reward)")
        ok = (run["step"] > 0) & (run[diversity] >= min_diversity_ratio * run["base_diversity"])
        if fd is not None:
            ok &= run[fd] <= max_fd_prior
        pool = run[ok & run[trained].notna()]
        if len(pool):
            step, rule = pool.loc[pool[trained].idxmax(), "step"], QUALIFIED
        else:
            step, rule = 0, COLLAPSED
        rows.append({"reward": reward, "method": method, "seed": seed, "step": int(step),
                     "rule": rule})
    return pd.DataFrame(rows, columns=[*RUN, "step", "rule"])
