"""Tables: mean ± std over seeds at the last update, with the base model as the first row.

Input: the long metrics table (columns reward, method, seed, step, metric, value), where
``reward`` is the reward the run was trained on. The base model's row comes from step 0, which
every run shares (the LoRA starts at zero).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vggflow.analysis.style import BASE, label, method_rank, metric_family, ordered_methods

COLUMNS = ["reward", "method", "seed", "step", "metric", "value"]


def collect(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-run metric tables and check their columns."""
    data = pd.concat(frames, ignore_index=True)
    missing = set(COLUMNS) - set(data.columns)
    if missing:
        raise ValueError(f"metrics tables lack column(s) {sorted(missing)}")
    return data[COLUMNS].sort_values(["reward", "method", "seed", "step", "metric"])


def collect_variants(frames: list[pd.DataFrame], variants: list[str]) -> pd.DataFrame:
    """Concatenate ablation or sweep runs' metric tables, adding each one's ``variant`` column."""
    if len(frames) != len(variants):
        raise ValueError(f"{len(frames)} metric tables for {len(variants)} variants")
    tagged = [frame.assign(variant=variant) for frame, variant in zip(frames, variants)]
    data = pd.concat(tagged, ignore_index=True)
    return data[["variant", *COLUMNS]].sort_values(
        ["reward", "method", "variant", "seed", "step", "metric"])


def summary(data: pd.DataFrame) -> pd.DataFrame:
    """One row per (trained reward, method, metric): mean, std and count over seeds."""
    last = data[data["step"] == data.groupby(["reward", "method", "seed"])["step"].transform("max")]
    base = data[data["step"] == 0].drop_duplicates(["reward", "seed", "metric"]).copy()
    base = base[base["method"] == base.groupby(["reward"])["method"].transform("first")]
    base["method"] = BASE
    rows = pd.concat([base, last])
    table = (
        rows.groupby(["reward", "method", "metric"])
        .agg(step=("step", "max"), mean=("value", "mean"), std=("value", "std"),
             seeds=("seed", "nunique"))
        .reset_index()
    )
    table["std"] = table["std"].fillna(0.0)
    table["_m"] = method_rank(table["method"])
    table["_f"] = table["metric"].map(metric_family)
    return table.sort_values(["reward", "_m", "_f", "metric"]).drop(columns=["_m", "_f"])


def to_markdown(table: pd.DataFrame, path: str | Path, digits: int = 3) -> None:
    """One Markdown table per trained reward: methods as rows, metrics as 'mean ± std' columns."""
    lines = []
    for reward, block in table.groupby("reward", sort=False):
        metrics = sorted(block["metric"].unique(), key=lambda m: (metric_family(m), m))
        lines += [f"## Trained on `{reward}` (mean ± std over seeds, last update)", ""]
        lines.append("| method | updates | " + " | ".join(metrics) + " |")
        lines.append("|---|---:|" + "---:|" * len(metrics))
        for method in ordered_methods(block["method"]):
            rows = block[block["method"] == method].set_index("metric")
            cells = [
                f"{rows.loc[m, 'mean']:.{digits}g} ± {rows.loc[m, 'std']:.{digits}g}"
                if m in rows.index else "" for m in metrics
            ]
            lines.append(f"| {label(method)} | {int(rows['step'].max())} | " + " | ".join(cells)
                         + " |")
        lines.append("")
    Path(path).write_text("\n".join(lines))


def write_tables(data: pd.DataFrame, csv_path: str | Path, markdown_path: str | Path) -> None:
    table = summary(data)
    table.to_csv(csv_path, index=False)
    to_markdown(table, markdown_path)


def compute_table(logs: list[pd.DataFrame], runs: list[dict]) -> pd.DataFrame:
    """Per method: wall time per update and peak memory, from the runs' training logs.

    ``runs[i]`` names the reward, method and seed of ``logs[i]``. Time is training only
    (``elapsed_s`` at the last update / updates, evaluation sampling excluded); memory is the
    process's peak (``peak_memory_mb``: GPU memory on CUDA, resident set size on CPU, which
    includes the ~0.6 GB of the imported libraries).
    """
    rows = []
    for log, run in zip(logs, runs):
        last = log.iloc[-1]
        rows.append({**run, "updates": int(last["step"]),
                     "seconds_per_update": last["elapsed_s"] / last["step"],
                     "peak_memory_mb": log["peak_memory_mb"].max()})
    data = pd.DataFrame(rows)
    table = (data.groupby("method")
             .agg(runs=("seed", "size"), updates=("updates", "max"),
                  seconds_per_update=("seconds_per_update", "mean"),
                  seconds_per_update_std=("seconds_per_update", "std"),
                  peak_memory_mb=("peak_memory_mb", "max"))
             .reset_index())
    table = table.fillna({"seconds_per_update_std": 0.0})
    return table.sort_values("method", key=method_rank)


def write_compute_table(table: pd.DataFrame, csv_path: str | Path,
                        markdown_path: str | Path) -> None:
    table.to_csv(csv_path, index=False)
    lines = ["| method | runs | updates | s / update (mean ± std) | peak memory (MB) |",
             "|---|---:|---:|---:|---:|"]
    for row in table.itertuples():
        lines.append(f"| {label(row.method)} | {row.runs} | {row.updates} | "
                     f"{row.seconds_per_update:.3f} ± {row.seconds_per_update_std:.3f} | "
                     f"{row.peak_memory_mb:.0f} |")
    Path(markdown_path).write_text("\n".join(lines) + "\n")
