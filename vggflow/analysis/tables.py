"""Tables: mean ± std over seeds, with the base model as the first row.

Input: the long metrics table (columns reward, method, seed, step, metric, value), where
``reward`` is the reward the run was trained on. The base model's row comes from step 0, which
every run shares (the LoRA starts at zero). ``summary`` reports every metric at the last update;
``paper_table`` the paper's Table 1 layout (trained reward, diversity, prior distance) at the
updates chosen by ``budget_steps`` or ``vggflow.analysis.selection.select_checkpoints``. Times:
``elapsed_s`` is training wall time in seconds (evaluation excluded); GPU-hours are
``elapsed_s / 3600 x processes`` (one process per GPU, from the training log).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from vggflow.analysis.selection import choose_metric
from vggflow.analysis.style import BASE, label, method_rank, metric_family, ordered_methods
from vggflow.analysis.times import run_processes

COLUMNS = ["reward", "method", "seed", "step", "metric", "value"]
RUN = ["reward", "method", "seed"]
REFERENCE = Path(__file__).resolve().parents[2] / "config" / "paper_table1.yaml"
REWARD_LABELS = {"aesthetic": "Aesthetic", "hpsv2": "HPSv2", "pickscore": "PickScore"}
QUANTITIES = ("reward", "diversity", "fd_prior")
HIGHER_IS_BETTER = {"reward": True, "diversity": True, "fd_prior": False}
BACKENDS = {"dreamsim": "DreamSim", "clip": "CLIP", "lite0": "EfficientNet-Lite0",
            "evalnet": "the suite's evaluation network", "inception": "Inception-v3",
            "points": "the raw 2-d points"}
PAPER_COLUMNS = ["reward", "method", "quantity", "metric", "mean", "std", "seeds", "step_min",
                 "step_max"]


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


def compute_table(logs: list[pd.DataFrame], runs: list[dict],
                  benchmarks: list[pd.DataFrame | None] | None = None,
                  job_peak_rss_mb: list[float | None] | None = None) -> pd.DataFrame:
    """Per method: wall time per update, training GPU-hours per run and peak memory, from the
    runs' training logs; with ``benchmarks`` (each train job's Snakemake ``benchmark:`` table, or
    None where there is none) also ``job_wall_s``, the whole job's wall time (mean; start-up,
    training, evaluation sampling, scoring and exports); with ``job_peak_rss_mb`` (each job
    process's peak resident set size in MB, its provenance's ``host_peak_rss_mb``, or None) also
    ``job_max_rss_mb`` (max): host memory, also on GPUs.

    ``runs[i]`` names the reward, method and seed of ``logs[i]``. Time is training only
    (``elapsed_s`` at the last update / updates, evaluation sampling excluded); ``gpu_hours`` is a
    run's total training time x its processes (GPUs, the log's ``processes``) / 3600, mean (and
    ``gpu_hours_std``) over the method's runs; memory is the process's peak (``peak_memory_mb``:
    GPU memory on CUDA, resident set size on CPU, which includes the ~0.6 GB of the imported
    libraries).
    """
    rows = []
    for index, (log, run) in enumerate(zip(logs, runs)):
        last = log.iloc[-1]
        job = benchmarks[index] if benchmarks is not None else None
        rss = job_peak_rss_mb[index] if job_peak_rss_mb is not None else None
        rows.append({**run, "updates": int(last["step"]),
                     "seconds_per_update": last["elapsed_s"] / last["step"],
                     "gpu_hours": last["elapsed_s"] * run_processes(log) / 3600,
                     "peak_memory_mb": log["peak_memory_mb"].max(),
                     "job_wall_s": np.nan if job is None else float(job["s"].iloc[-1]),
                     "job_max_rss_mb": np.nan if rss is None else float(rss)})
    data = pd.DataFrame(rows)
    table = (data.groupby("method")
             .agg(runs=("seed", "size"), updates=("updates", "max"),
                  seconds_per_update=("seconds_per_update", "mean"),
                  seconds_per_update_std=("seconds_per_update", "std"),
                  peak_memory_mb=("peak_memory_mb", "max"),
                  gpu_hours=("gpu_hours", "mean"), gpu_hours_std=("gpu_hours", "std"),
                  job_wall_s=("job_wall_s", "mean"), job_max_rss_mb=("job_max_rss_mb", "max"))
             .reset_index())
    table = table.fillna({"seconds_per_update_std": 0.0, "gpu_hours_std": 0.0})
    return table.sort_values("method", key=method_rank)


def _write_csv_and_markdown(table: pd.DataFrame, csv_path: str | Path,
                            markdown_path: str | Path, titles: list[str], left: int,
                            cells) -> None:
    """``table`` as CSV, and as a Markdown table with the column ``titles`` (the first ``left``
    left-aligned, the others right-aligned) and the row ``cells(row)`` per ``itertuples`` row."""
    table.to_csv(csv_path, index=False)
    lines = ["| " + " | ".join(titles) + " |",
             "|" + "|".join(["---"] * left + ["---:"] * (len(titles) - left)) + "|"]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in table.itertuples()]
    Path(markdown_path).write_text("\n".join(lines) + "\n")


def write_compute_table(table: pd.DataFrame, csv_path: str | Path,
                        markdown_path: str | Path) -> None:
    titles = ["method", "runs", "updates", "s / update (mean ± std)", "peak memory (MB)",
              "GPU-hours / run (mean ± std)", "job wall time (s)", "job max RSS (MB)"]
    _write_csv_and_markdown(table, csv_path, markdown_path, titles, 1, lambda row: [
        label(row.method), str(row.runs), str(row.updates),
        f"{row.seconds_per_update:.3f} ± {row.seconds_per_update_std:.3f}",
        f"{row.peak_memory_mb:.0f}", f"{row.gpu_hours:.3g} ± {row.gpu_hours_std:.2g}",
        f"{row.job_wall_s:.1f}", f"{row.job_max_rss_mb:.0f}"])


def reward_cost_table(metrics: pd.DataFrame, times: pd.DataFrame) -> pd.DataFrame:
    """Training cost per unit of reward gained, per (trained reward, method).

    A run's gain is its trained reward (metric ``reward_<reward>``) at its last evaluated update
    minus at update 0 (the base model, on the shared evaluation noise and prompts); its cost the
    training seconds up to that update (``times``: ``elapsed_s``, evaluation excluded).
    ``seconds_per_reward_unit`` is the mean seconds over the mean gain across seeds; NaN where the
    mean gain is not positive (no gain to pay for).
    """
    trained = metrics[metrics["metric"] == "reward_" + metrics["reward"]]
    if trained.empty:
        raise ValueError("metrics hold no trained-reward rows (metric reward_<trained reward>)")
    start = trained[trained["step"] == 0].set_index(RUN)["value"]
    end = trained[trained["step"] == trained.groupby(RUN)["step"].transform("max")]
    runs = end.set_index(RUN).assign(gain=lambda d: d["value"] - start.reindex(d.index))
    runs = runs.reset_index().merge(times, on=[*RUN, "step"], how="left")
    missing = runs[runs["elapsed_s"].isna()]
    if not missing.empty:
        first = missing.iloc[0]
        raise ValueError(f"no training time for {first['reward']}/{first['method']}/seed"
                         f"{first['seed']} at update {first['step']} (results/metrics/times.csv)")
    table = (runs.groupby(["reward", "method"])
             .agg(seeds=("seed", "nunique"), updates=("step", "max"),
                  reward_gain=("gain", "mean"), reward_gain_std=("gain", "std"),
                  train_s=("elapsed_s", "mean"))
             .reset_index())
    table["reward_gain_std"] = table["reward_gain_std"].fillna(0.0)
    table["seconds_per_update"] = table["train_s"] / table["updates"]
    table["seconds_per_reward_unit"] = (table["train_s"] / table["reward_gain"]).where(
        table["reward_gain"] > 0)
    table["_m"] = method_rank(table["method"])
    return table.sort_values(["reward", "_m"]).drop(columns="_m").reset_index(drop=True)


def write_reward_cost_table(table: pd.DataFrame, csv_path: str | Path,
                            markdown_path: str | Path) -> None:
    titles = ["trained reward", "method", "updates", "reward gain (mean ± std)",
              "training s / run", "s / update", "training s per unit of reward gained"]
    _write_csv_and_markdown(table, csv_path, markdown_path, titles, 2, lambda row: [
        row.reward, label(row.method), str(row.updates),
        f"{row.reward_gain:.3g} ± {row.reward_gain_std:.2g}", f"{row.train_s:.3g}",
        f"{row.seconds_per_update:.3g}",
        "no gain" if math.isnan(row.seconds_per_reward_unit)
        else f"{row.seconds_per_reward_unit:.3g}"])


def _elapsed_at(evaluated: pd.DataFrame, times: pd.DataFrame) -> pd.Series:
    """Training seconds at each evaluated (run, step): the run's logged ``elapsed_s``, linearly
    interpolated between logged updates (0 s at step 0; the last logged value past the end)."""
    out = pd.Series(np.nan, index=evaluated.index)
    logged = dict(tuple(times.groupby(RUN)))
    start = pd.DataFrame({"step": [0], "elapsed_s": [0.0]})
    for key, rows in evaluated.groupby(RUN):
        if key not in logged:
            raise ValueError(f"no training times for run {key}")
        log = (pd.concat([start, logged[key][["step", "elapsed_s"]]])
               .drop_duplicates("step", keep="last").sort_values("step"))
        out[rows.index] = np.interp(rows["step"], log["step"], log["elapsed_s"])
    return out


def budget_steps(metrics: pd.DataFrame, times: pd.DataFrame | None = None,
                 budget: str = "last") -> pd.DataFrame:
    """The update each run (reward, method, seed) is compared at, under a budget rule.

    * ``"last"``: the run's last evaluated update.
    * ``"updates"`` (matched updates): per trained reward, the budget is the smallest of its
      runs' last evaluated updates (the largest update every method's runs reached); each run
      uses its last evaluated update <= that.
    * ``"gpu_hours"`` (matched compute, needs ``times``): per trained reward, the budget is the
      smallest, over methods, of the mean over seeds of the training GPU-seconds (seconds x
      processes) at each run's last evaluated update; each run uses its last evaluated update
      whose training GPU-seconds are within it (step 0 always is, so a seed of the cheapest
      method that ran slower than its mean drops to an earlier checkpoint). Training seconds at
      an update come from ``times`` (see ``vggflow.analysis.times.training_times``),
      interpolated between logged updates.

    Returns reward, method, seed, step and, when ``times`` is given, ``gpu_hours`` (training
    GPU-hours up to that update: elapsed_s x processes / 3600).
    """
    if budget not in ("last", "updates", "gpu_hours"):
        raise ValueError(f"unknown budget {budget!r}: use 'last', 'updates' or 'gpu_hours'")
    if budget == "gpu_hours" and times is None:
        raise ValueError("budget 'gpu_hours' needs the runs' training times")
    evaluated = (metrics[[*RUN, "step"]].drop_duplicates().sort_values([*RUN, "step"])
                 .reset_index(drop=True))
    if times is not None:  # GPU-seconds: training seconds x the run's processes (default 1)
        processes = times.assign(processes=times.get("processes", 1)).groupby(RUN)["processes"]
        evaluated["gpu_seconds"] = _elapsed_at(evaluated, times) * evaluated.join(
            processes.max(), on=RUN)["processes"]
    last = evaluated.groupby(RUN)["step"].transform("max")
    if budget == "last":
        pool = evaluated
    elif budget == "updates":
        pool = evaluated[evaluated["step"] <= last.groupby(evaluated["reward"]).transform("min")]
    else:
        totals = (evaluated[evaluated["step"] == last].groupby(["reward", "method"])["gpu_seconds"]
                  .mean().groupby("reward").min())
        limit = evaluated["reward"].map(totals) * (1 + 1e-9)  # a mean of equal times may round
        pool = evaluated[evaluated["gpu_seconds"] <= limit]
    chosen = pool.loc[pool.groupby(RUN)["step"].idxmax()]
    if len(chosen) != evaluated.groupby(RUN).ngroups:
        raise ValueError(f"some runs have no evaluated update within the {budget!r} budget "
                         "(is step 0 evaluated for every run?)")
    out = chosen[[*RUN, "step"]].reset_index(drop=True)
    if times is not None:
        out["gpu_hours"] = chosen["gpu_seconds"].to_numpy() / 3600
    return out


def paper_table(metrics: pd.DataFrame, steps: pd.DataFrame, diversity_metric: str | None = None,
                fd_metric: str | None = None) -> pd.DataFrame:
    """The paper's Table 1 as a long table: one row per (trained reward, method, quantity).

    Methods: the base model (step 0 of the runs) first, then the methods of ``steps`` in the
    style order; each run is taken at its ``steps`` update (from ``budget_steps`` or
    ``select_checkpoints``). Quantities: ``reward`` (``reward_<trained reward>``), ``diversity``
    and ``fd_prior`` (the metrics chosen by ``selection.choose_metric``; ``fd_prior_inception``
    is the paper's FID). Columns: reward, method, quantity, metric, mean, std (over seeds,
    ddof 1; NaN with one seed), seeds, step_min, step_max (the updates used, over seeds) and,
    when ``steps`` has it, gpu_hours (mean over seeds; 0 for the base model).
    """
    names = {"diversity": choose_metric(metrics, "diversity", diversity_metric),
             "fd_prior": choose_metric(metrics, "fd_prior", fd_metric)}
    keys = [*RUN, "step"]
    extra = ["gpu_hours"] if "gpu_hours" in steps.columns else []
    picked = steps[keys + extra].drop_duplicates(keys)
    found = metrics[keys].drop_duplicates().merge(picked[keys], on=keys)
    if len(found) != len(picked):
        raise ValueError(f"{len(picked) - len(found)} chosen update(s) have no metrics")
    runs = metrics.merge(picked, on=keys)
    base = metrics[(metrics["step"] == 0) & metrics["reward"].isin(picked["reward"])]
    base = base.assign(method=BASE, **{column: 0.0 for column in extra})
    rows = pd.concat([base, runs], ignore_index=True)
    quantity = pd.Series(None, index=rows.index, dtype="object")
    quantity[rows["metric"] == "reward_" + rows["reward"]] = "reward"
    for name, metric in names.items():
        quantity[rows["metric"] == metric] = name
    rows = rows.assign(quantity=quantity).dropna(subset=["quantity"])
    extra_agg = {column: (column, "mean") for column in extra}
    # one value per (run, metric) first: the base model's step 0 is shared by every method
    per_seed = (rows.groupby(["reward", "method", "quantity", "metric", "seed"])
                .agg(value=("value", "mean"), step=("step", "max"), **extra_agg).reset_index())
    table = (per_seed.groupby(["reward", "method", "quantity", "metric"])
             .agg(mean=("value", "mean"), std=("value", "std"), seeds=("seed", "nunique"),
                  step_min=("step", "min"), step_max=("step", "max"), **extra_agg)
             .reset_index())
    counts = table.groupby(["reward", "method"])["quantity"].nunique()
    if (counts < len(QUANTITIES)).any():
        raise ValueError("missing trained reward, diversity or fd_prior values for "
                         f"{counts[counts < len(QUANTITIES)].index.tolist()}")
    table["_m"] = method_rank(table["method"])
    table["_q"] = table["quantity"].map(QUANTITIES.index)
    return (table.sort_values(["reward", "_m", "_q"])[PAPER_COLUMNS + extra]
            .reset_index(drop=True))


def reference_rows(path: str | Path = REFERENCE) -> pd.DataFrame:
    """The paper's published Table 1 (``config/paper_table1.yaml``) in ``paper_table``'s layout,
    converted to this project's units (printed value x the file's ``scale``); ``scale`` is a
    column (printed = mean / scale)."""
    data = yaml.safe_load(Path(path).read_text())
    rows = []
    for method, per_reward in data["rows"].items():
        for reward, values in per_reward.items():
            for quantity in QUANTITIES:
                mean, std = values[quantity]
                scale = data["scale"][reward][quantity]
                step = 0 if method == BASE else data["updates"]
                rows.append({"reward": reward, "method": method, "quantity": quantity,
                             "metric": data["metrics"].get(quantity, f"reward_{reward}"),
                             "mean": mean * scale, "std": std * scale, "seeds": data["seeds"],
                             "step_min": step, "step_max": step, "scale": scale})
    return pd.DataFrame(rows)


def _decimals(means: pd.Series, digits: int) -> int:
    """Decimals that give the column's largest |mean| ``digits`` significant digits."""
    largest = means.abs().max()
    if not np.isfinite(largest) or largest == 0:
        return digits - 1
    return max(0, digits - 1 - math.floor(math.log10(largest)))


def _grid(table: pd.DataFrame, rewards: list[str], digits: int, latex: bool) -> list[list[str]]:
    """Rows of cells: method label, then per reward its reward, diversity, prior distance and
    updates; the best finetuned method per column (the base model excluded) in bold."""
    pm, dash = (r" $\pm$ ", "--") if latex else (" ± ", "–")
    methods = ordered_methods(table["method"])
    cells = {method: [label(method)] for method in methods}
    for reward in rewards:
        block = table[table["reward"] == reward]
        for quantity in QUANTITIES:
            values = block[block["quantity"] == quantity].set_index("method")
            places = _decimals(values["mean"], digits)
            tuned = values["mean"].drop(BASE, errors="ignore").dropna()
            best = tuned.max() if HIGHER_IS_BETTER[quantity] else tuned.min()
            for method in methods:
                if method not in values.index:
                    cells[method].append(dash)
                    continue
                mean, std = values.loc[method, "mean"], values.loc[method, "std"]
                text = f"{mean:.{places}f}" + ("" if pd.isna(std) else f"{pm}{std:.{places}f}")
                if method != BASE and mean == best:
                    text = rf"\textbf{{{text}}}" if latex else f"**{text}**"
                cells[method].append(text)
        used = block.groupby("method").agg(lo=("step_min", "min"), hi=("step_max", "max"))
        for method in methods:
            if method not in used.index:
                cells[method].append(dash)
                continue
            lo, hi = int(used.loc[method, "lo"]), int(used.loc[method, "hi"])
            cells[method].append(str(lo) if lo == hi else f"{lo}{dash}{hi}")
    return [cells[method] for method in methods]


def _backend(metric: str) -> str:
    name = metric.split("_")[-1]
    return BACKENDS.get(name, name)


def _fd_label(table: pd.DataFrame) -> str:
    fd = table.loc[table["quantity"] == "fd_prior", "metric"].iloc[0]
    return "FID" if fd == "fd_prior_inception" else "FD"


def _notes(table: pd.DataFrame, reference: bool, eval_prompts: int | None,
           images_per_prompt: int | None) -> list[str]:
    """Lines stated under the table; `code` marks metric names."""
    used = table.drop_duplicates("quantity").set_index("quantity")["metric"]
    seeds = sorted(table["seeds"].unique())
    count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}, see the CSV"
    lines = [f"Mean and std over seeds ({count} per cell); updates: the update used, min to max "
             "over seeds. Bold: the best finetuned method per column (reward and diversity: "
             "higher is better; prior distance: lower).",
             f"Diversity: `{used['diversity']}` ({_backend(used['diversity'])} features); prior "
             f"distance: `{used['fd_prior']}` ({_backend(used['fd_prior'])} features), per "
             "prompt against the base model's images, averaged over prompts."]
    if not reference:
        return lines
    counts = (f"{eval_prompts} evaluation prompts x {images_per_prompt} images per prompt"
              if None not in (eval_prompts, images_per_prompt)
              else "the configured evaluation prompts and images per prompt")
    return lines + [
        "Protocol differences from the published rows (paper: 400 updates, 3 seeds):",
        f"- diversity: ours {_backend(used['diversity'])} features, the paper's DreamSim;",
        f"- prior distance: ours {_backend(used['fd_prior'])} features, the paper's Inception-v3 "
        "FID; both per prompt against the base model's images, but ours reuses the evaluation "
        "noise, so the base model's own value is 0 (the paper's base rows are not: independent "
        "samples);",
        f"- evaluation: ours {counts}; the paper does not state its prompts or counts (its "
        "diversity batch is 16 images);",
        "- updates: ours as in the table, the paper's 400 for every method;",
        "- units: published values converted to ours (the paper prints diversity x 100 and the "
        "HPSv2 cosine x 10).",
    ]


def paper_markdown(table: pd.DataFrame, caption: str, reference: bool = False,
                   eval_prompts: int | None = None, images_per_prompt: int | None = None,
                   digits: int = 4) -> str:
    """One Markdown table, columns grouped per trained reward ("Aesthetic: reward ↑", ...);
    with ``reference``, the published rows follow, labelled "published (paper)"."""
    rewards = sorted(table["reward"].unique())
    header = ["method"]
    for reward in rewards:
        name = REWARD_LABELS.get(reward, reward)
        header += [f"{name}: reward ↑", f"{name}: diversity ↑", f"{name}: {_fd_label(table)} ↓",
                   f"{name}: updates"]
    lines = [f"**{caption}**", "", "| " + " | ".join(header) + " |",
             "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in _grid(table, rewards, digits, False)]
    if reference:
        published = reference_rows()
        lines.append("| *published (paper)* |" + " |" * (len(header) - 1))
        for row in _grid(published[published["reward"].isin(rewards)], rewards, digits, False):
            lines.append("| " + " | ".join([f"{row[0]} (paper)", *row[1:]]) + " |")
    for note in _notes(table, reference, eval_prompts, images_per_prompt):
        lines += [note] if note.startswith("- ") else ["", note]  # paragraphs, then a list
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    """Escape ``& % # _``; `code` becomes \\texttt{code}."""
    for char in "&%#_":
        text = text.replace(char, "\\" + char)
    parts = text.split("`")
    return "".join(rf"\texttt{{{part}}}" if i % 2 else part for i, part in enumerate(parts))


def _latex_rows(table: pd.DataFrame, rewards: list[str], digits: int) -> list[str]:
    return [" & ".join([_latex_escape(row[0]), *row[1:]]) + r" \\"
            for row in _grid(table, rewards, digits, True)]


def paper_latex(table: pd.DataFrame, caption: str, reference: bool = False,
                eval_prompts: int | None = None, images_per_prompt: int | None = None,
                digits: int = 4) -> str:
    """A booktabs ``table`` in the paper's layout (``mean $\\pm$ std``, the best finetuned method
    per column in bold); with ``reference``, a block labelled "published (paper)"."""
    rewards = sorted(table["reward"].unique())
    groups = " & ".join(rf"\multicolumn{{4}}{{c}}{{{_latex_escape(REWARD_LABELS.get(r, r))}}}"
                        for r in rewards)
    rules = " ".join(rf"\cmidrule(lr){{{2 + 4 * i}-{5 + 4 * i}}}" for i in range(len(rewards)))
    names = [r"Reward $\uparrow$", r"Diversity $\uparrow$", rf"{_fd_label(table)} $\downarrow$",
             "Updates"]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}}}",
             r"\small", rf"\begin{{tabular}}{{l{'rrrr' * len(rewards)}}}", r"\toprule",
             rf" & {groups} \\", rules, "Method & " + " & ".join(names * len(rewards)) + r" \\",
             r"\midrule"]
    lines += _latex_rows(table, rewards, digits)
    if reference:
        published = reference_rows()
        width = 1 + 4 * len(rewards)
        lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\textit{{published (paper)}}}} \\"]
        lines += _latex_rows(published[published["reward"].isin(rewards)], rewards, digits)
    notes = _notes(table, reference, eval_prompts, images_per_prompt)
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip",
              r"{\footnotesize " + " \\\\\n".join(_latex_escape(n) for n in notes) + "}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_paper_tables(table: pd.DataFrame, csv_path: str | Path, markdown_path: str | Path,
                       latex_path: str | Path, caption: str, reference: bool = False,
                       eval_prompts: int | None = None,
                       images_per_prompt: int | None = None) -> None:
    """``paper_table``'s output as CSV (the long table as is), Markdown (``paper_markdown``) and
    LaTeX (``paper_latex``). ``eval_prompts`` and ``images_per_prompt`` describe our evaluation
    in the protocol differences printed with ``reference``."""
    table.to_csv(csv_path, index=False)
    options = {"reference": reference, "eval_prompts": eval_prompts,
               "images_per_prompt": images_per_prompt}
    Path(markdown_path).write_text(paper_markdown(table, caption, **options))
    Path(latex_path).write_text(paper_latex(table, caption, **options))
