"""Convergence, trade-off and sweep plots; mean with a ± std band (or error bars) over seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vggflow.analysis.style import (
    BASE,
    PALETTE,
    PAPER_THEME,
    label,
    metric_family,
    ordered_methods,
)

MARKERS = "osD^v<>p"  # one per variant when several methods share a trajectory plot


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, with seaborn's paper theme
    (``PAPER_THEME``: one look for every figure; imported lazily: it is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(PAPER_THEME)
    return plt


def _save(fig, path: str | Path) -> None:
    """Write ``path`` (PNG) and the same figure as PDF next to it, then close it.

    Figures made without a layout engine get ``tight_layout``; others keep their own.
    """
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


def _reward_runs(data: pd.DataFrame, reward: str) -> pd.DataFrame:
    """The rows of the runs trained on ``reward``; a ValueError if there are none."""
    runs = data[data["reward"] == reward]
    if runs.empty:
        known = sorted(data["reward"].unique())
        raise ValueError(f"no metrics for reward {reward!r} (rewards present: {known})")
    return runs


def _seed_stats(runs: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per (method, metric, step): ``x`` (mean over seeds), and the value's mean and std.

    ``runs`` are of one trained reward; other rewards' ``reward_*`` metrics are dropped. The std is
    over seeds, 0 for a single seed.
    """
    trained = f"reward_{runs['reward'].iloc[0]}"
    runs = runs[~runs["metric"].str.startswith("reward_") | (runs["metric"] == trained)]
    stats = (runs.groupby(["method", "metric", "step"])
             .agg(x=(x, "mean"), mean=("value", "mean"), std=("value", "std"))
             .reset_index())
    stats["std"] = stats["std"].fillna(0.0)
    return stats


def _band_panels(stats: pd.DataFrame, xlabel: str, title: str, path: str | Path):
    """One panel per metric of ``stats`` (from ``_seed_stats``): mean line, ± std band per method.

    Writes ``path`` (and a PDF); returns the closed figure, whose lines hold the plotted data.
    """
    plt = _pyplot()

    metrics = sorted(stats["metric"].unique(), key=lambda m: (metric_family(m), m))
    methods = ordered_methods(stats["method"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for method in methods:
            rows = stats[(stats["metric"] == metric) & (stats["method"] == method)]
            rows = rows.sort_values("step")
            color = PALETTE.get(method)
            ax.plot(rows["x"], rows["mean"], "o-", ms=3, color=color, label=label(method))
            ax.fill_between(rows["x"], rows["mean"] - rows["std"], rows["mean"] + rows["std"],
                            color=color, alpha=0.2, linewidth=0)
        ax.set_title(metric)
        ax.set_xlabel(xlabel)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
    return fig


def convergence(data: pd.DataFrame, reward: str, path: str | Path):
    """One panel per metric of the runs trained on ``reward`` against the update step.

    Mean with a ± std band over seeds; writes ``path`` (and a PDF) and returns the closed figure.
    """
    runs = _reward_runs(data, reward)
    return _band_panels(_seed_stats(runs, "step"), "update step",
                        f"Finetuning on {reward} (mean ± std over seeds)", path)


def _trajectory_panels(data: pd.DataFrame, reward: str, path: str | Path):
    """Trained reward against every diversity and fd_prior metric, one trajectory per curve.

    A curve is a method, or a (method, variant) when ``data`` has a ``variant`` column. It runs
    through the evaluation checkpoints (mean over seeds, ± std error bars on both axes) from step 0,
    the base model, drawn as a grey star. Curves take their method's palette colour and variants
    a marker each, or a tab10 colour each when all are of one method (ablations).
    Writes ``path`` (and a PDF); returns the closed figure.
    """
    plt = _pyplot()

    runs = _reward_runs(data, reward)
    y = f"reward_{reward}"
    xs = sorted((m for m in runs["metric"].unique() if m.startswith(("diversity_", "fd_prior_"))),
                key=lambda m: (metric_family(m), m))
    if y not in set(runs["metric"]) or not xs:
        raise ValueError(f"runs trained on {reward!r} need {y} and a diversity_* or fd_prior_* "
                         f"metric; they have {sorted(runs['metric'].unique())}")
    keys = ["method", "variant"] if "variant" in runs.columns else ["method"]
    if not (runs["step"] == 0).any():
        raise ValueError(f"runs trained on {reward!r} have no step 0 (the base model)")
    wide = runs.pivot_table(index=[*keys, "seed", "step"], columns="metric", values="value")
    stats = wide.groupby([*keys, "step"]).agg(["mean", "std"]).fillna(0.0)
    base = wide.xs(0, level="step").groupby(level="seed").mean().agg(["mean", "std"]).fillna(0.0)

    rank = {m: i for i, m in enumerate(ordered_methods(runs["method"]))}
    curves = sorted(stats.groupby(level=keys, sort=False), key=lambda item: rank[item[0][0]])
    many_methods = len(rank) > 1
    variants = list(dict.fromkeys(runs["variant"])) if "variant" in keys else []
    fig, axes = plt.subplots(1, len(xs), figsize=(5 * len(xs), 4), squeeze=False)
    for ax, x in zip(axes[0], xs):
        for i, ((method, *variant), block) in enumerate(curves):
            color, marker, name = PALETTE.get(method), "o", label(method)
            if variant and many_methods:
                marker = MARKERS[variants.index(variant[0]) % len(MARKERS)]
                name = f"{name}: {variant[0]}"
            elif variant:
                color, name = plt.get_cmap("tab10")(i % 10), str(variant[0])
            block = block.sort_index(level="step")
            ax.errorbar(block[(x, "mean")], block[(y, "mean")], xerr=block[(x, "std")],
                        yerr=block[(y, "std")], fmt=f"{marker}-", ms=4, capsize=2,
                        elinewidth=0.7, color=color, label=name)
        ax.errorbar(base[x]["mean"], base[y]["mean"], xerr=base[x]["std"], yerr=base[y]["std"],
                    fmt="*", ms=13, color=PALETTE[BASE], markeredgecolor="black", zorder=5,
                    label=label(BASE))
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(f"{y} vs {x}")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Finetuning on {reward}: trajectories over checkpoints (mean ± std over seeds)")
    _save(fig, path)
    return fig


def tradeoff(data: pd.DataFrame, path: str | Path):
    """Reward against diversity and against fd_prior, one curve per variant (paper Sec. 5.3).

    ``data``: ablation metrics with a ``variant`` column, of the reward of its first row.
    """
    return _trajectory_panels(data, data["reward"].iloc[0], path)


def sweep(settings: pd.DataFrame, min_diversity_ratio: float, path: str | Path) -> None:
    """Per trained reward: final reward against final diversity of every swept setting.

    ``settings``: the table of ``vggflow.analysis.sweep.settings_table``. Hollow markers do not
    qualify, winners are stars; the dashed line is the diversity a setting needs to qualify.
    """
    plt = _pyplot()

    rewards = list(dict.fromkeys(settings["reward"]))
    fig, axes = plt.subplots(1, len(rewards), figsize=(5.5 * len(rewards), 4.2), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        block = settings[settings["reward"] == reward]
        for method in ordered_methods(block["method"]):
            rows = block[block["method"] == method]
            color = PALETTE.get(method)
            ax.scatter(rows["diversity"], rows["trained_reward"], label=label(method), s=24,
                       facecolors=[color if q else "none" for q in rows["qualified"]],
                       edgecolors=color)
            best = rows[rows["winner"]]
            ax.scatter(best["diversity"], best["trained_reward"], color=PALETTE.get(method),
                       marker="*", s=220, edgecolor="black", linewidth=0.6)
            for row in best.itertuples():
                ax.annotate(row.variant, (row.diversity, row.trained_reward), fontsize=6,
                            xytext=(6, 4), textcoords="offset points")
        ax.axvline(min_diversity_ratio * block["base_diversity"].iloc[0], color="gray",
                   linestyle="--", linewidth=1)
        ax.set_xlabel("diversity at the last update")
        ax.set_ylabel(f"reward_{reward} at the last update")
        ax.set_title(f"Sweep on {reward} (stars: winners; hollow: not qualified)")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)
