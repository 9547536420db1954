"""Fair tuning: pick each method's hyperparameters per reward from a sweep, by one stated rule.

Rule (the same for learning rates and Adjoint Matching's lambda): at the last update, averaged
over the sweep's seeds, a setting *qualifies* when no seed diverged (a non-finite loss, recorded
by ``train --record-divergence``), its diversity is at least ``min_diversity_ratio`` times the
base model's (no collapse) and, when ``max_fd_prior`` is set, its ``fd_prior`` is at most that
(the samples stay near the base model's: hacks such as noise-like images keep their diversity).
The winner is the qualifying setting with the highest trained reward; when none qualifies, the
setting that did not diverge and keeps the most diversity.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from vggflow.analysis.selection import choose_metric
from vggflow.analysis.style import label, method_rank
from vggflow.config import sweep_overrides

SETTING = ["reward", "method", "variant"]


def describe_rule(min_diversity_ratio: float, max_fd_prior: float | None) -> str:
    limits = f"diversity >= {min_diversity_ratio:g} x the base model's"
    if max_fd_prior is not None:
        limits += f" and fd_prior <= {max_fd_prior:g}"
    return (f"rule: the highest trained reward at the last update among settings that did not "
            f"diverge, with {limits}; else the most diverse setting")


def settings_table(data: pd.DataFrame, min_diversity_ratio: float,
                   max_fd_prior: float | None = None) -> pd.DataFrame:
    """One row per (reward, method, variant): final means over seeds, ``qualified``, ``winner``.

    ``data``: sweep metrics with a ``variant`` column (see ``collect_variants``).
    Columns: reward, method, variant, seeds, updates (the last evaluated update; fewer than the
    budget when a seed diverged), diverged, trained_reward, diversity, base_diversity,
    diversity_ratio, fd_prior (when measured), qualified, winner.
    """
    # the same metrics as the checkpoint selection and Table 1 (DreamSim first, then Inception)
    try:
        diversity = choose_metric(data, "diversity")
    except ValueError:
        raise ValueError("the sweep's metrics have no diversity_* metric to check collapse "
                         "with") from None
    fd_prior = (choose_metric(data, "fd_prior")
                if data["metric"].str.startswith("fd_prior_").any() else None)
    last_step = data.groupby(SETTING + ["seed"])["step"].transform("max")
    last = data[data["step"] == last_step]
    budget = data["step"].max()  # a diverged run's last evaluation comes before it
    base = data[data["step"] == 0]
    rows = []
    for (reward, method, variant), block in last.groupby(SETTING, sort=False):
        values = block.groupby("metric")["value"].mean()
        base_diversity = base[(base["reward"] == reward)
                              & (base["metric"] == diversity)]["value"].mean()
        row = {"reward": reward, "method": method, "variant": variant,
               "seeds": block["seed"].nunique(), "updates": int(block["step"].min()),
               "diverged": bool(block["step"].min() < budget),
               "trained_reward": values[f"reward_{reward}"], "diversity": values[diversity],
               "base_diversity": base_diversity,
               "diversity_ratio": values[diversity] / base_diversity}
        if fd_prior is not None:
            row["fd_prior"] = values[fd_prior]
        rows.append(row)
    table = pd.DataFrame(rows)
    table["qualified"] = (table["diversity_ratio"] >= min_diversity_ratio) & ~table["diverged"]
    if max_fd_prior is not None:
        if "fd_prior" not in table.columns:
            raise ValueError("sweep.max_fd_prior is set, but the metrics have no fd_prior_*")
        table["qualified"] &= table["fd_prior"] <= max_fd_prior
    table["winner"] = False
    for _, block in table.groupby(["reward", "method"], sort=False):
        pool = block[block["qualified"]]
        if len(pool):
            best = pool["trained_reward"].idxmax()
        else:
            stable = block[~block["diverged"]]
            best = (stable if len(stable) else block)["diversity"].idxmax()
        table.loc[best, "winner"] = True
    table["_method"] = method_rank(table["method"])
    table["_values"] = table["variant"].map(lambda name: tuple(sweep_overrides(name).values()))
    return (table.sort_values(["reward", "_method", "_values"])
            .drop(columns=["_method", "_values"]).reset_index(drop=True))


def winner_overrides(table: pd.DataFrame) -> dict:
    """``{method: {"per_reward": {reward: overrides}}}`` of the winners, ready to paste into
    ``config/methods/<method>.yaml``. Overrides are parsed back from the setting names.
    """
    overrides: dict = {}
    for row in table[table["winner"]].itertuples():
        overrides.setdefault(row.method, {"per_reward": {}})["per_reward"][row.reward] = \
            sweep_overrides(row.variant)
    return overrides


def write_winners(table: pd.DataFrame, rule: str, settings_path: str | Path,
                  markdown_path: str | Path, overrides_path: str | Path) -> None:
    """The settings table (CSV), a Markdown summary and the winners' overrides (YAML)."""
    table.to_csv(settings_path, index=False)
    lines = [f"# Sweep winners ({rule})", ""]
    has_fd = "fd_prior" in table.columns
    header = "| reward | method | setting | reward (mean) | diversity / base |"
    header += " fd_prior |" if has_fd else ""
    lines += [header + " qualified | winner |",
              "|---|---|---|---:|---:|" + ("---:|" if has_fd else "") + "---|---|"]
    for row in table.itertuples():
        cells = [row.reward, label(row.method), f"`{row.variant}`", f"{row.trained_reward:.4g}",
                 f"{row.diversity_ratio:.2f}"]
        cells += [f"{row.fd_prior:.4g}"] if has_fd else []
        qualified = "yes" if row.qualified else "no (diverged)" if row.diverged else "no"
        cells += [qualified, "**yes**" if row.winner else ""]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    Path(markdown_path).write_text("\n".join(lines) + "\n")
    text = yaml.safe_dump(winner_overrides(table), sort_keys=True)
    Path(overrides_path).write_text("# Winners of `snakemake sweep`: per_reward overrides for "
                                    "config/methods/<method>.yaml\n" + text)
