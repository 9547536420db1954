"""Convergence plots: every metric against the update step, mean with a ± std band over seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vggflow.analysis.style import PALETTE, label, metric_family, ordered_methods


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported lazily: it is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    """Write ``path`` (PNG) and the same figure as PDF next to it, then close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


def convergence(data: pd.DataFrame, reward: str, path: str | Path) -> None:
    """One panel per metric of the runs trained on ``reward``; writes ``path`` (and a PDF)."""
    plt = _pyplot()
    import seaborn as sns

    runs = data[data["reward"] == reward]
    if runs.empty:
        raise ValueError(f"no metrics for reward {reward!r}")
    metrics = [m for m in sorted(runs["metric"].unique(), key=lambda m: (metric_family(m), m))
               if not m.startswith("reward_") or m == f"reward_{reward}"]
    methods = ordered_methods(runs["method"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sns.lineplot(data=runs[runs["metric"] == metric], x="step", y="value", hue="method",
                     hue_order=methods, palette=PALETTE, errorbar="sd", marker="o",
                     markersize=3, ax=ax, legend=ax is axes[0][0])
        ax.set_title(metric)
        ax.set_xlabel("update step")
        ax.set_ylabel("")
    legend = axes[0][0].get_legend()
    if legend is not None:
        for text in legend.get_texts():
            text.set_text(label(text.get_text()))
        legend.set_title(None)
    fig.suptitle(f"Finetuning on {reward} (mean ± std over seeds)")
    _save(fig, path)


def tradeoff(data: pd.DataFrame, path: str | Path) -> None:
    """Reward against diversity and against fd_prior, one curve per variant (paper Sec. 5.3).

    ``data``: ablation metrics with a ``variant`` column; each curve runs through the evaluation
    checkpoints (mean over seeds), its first point being the base model.
    """
    plt = _pyplot()

    reward = f"reward_{data['reward'].iloc[0]}"
    means = data.groupby(["variant", "step", "metric"])["value"].mean().unstack("metric")
    others = [m for m in means.columns if m.startswith(("diversity_", "fd_prior_"))]
    fig, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 4), squeeze=False)
    for ax, metric in zip(axes[0], sorted(others)):
        for variant, block in means.groupby(level="variant"):
            block = block.droplevel("variant").sort_index()
            ax.plot(block[metric], block[reward], "o-", ms=3, label=variant)
        ax.set_xlabel(metric)
        ax.set_ylabel(reward)
        ax.set_title(f"{reward} vs {metric}")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


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
