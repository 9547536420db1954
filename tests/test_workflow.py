"""The workflow the catalog way: lint, dry runs, bad configs, and a real run of .test/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_lint_is_clean():
    result = snakemake("--lint", "--cores", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def planned_jobs(*args: str) -> dict[str, int]:
    """Jobs per rule of a dry run (``snakemake -n --quiet rules ...``)."""
    result = snakemake("-n", "--cores", "2", "--quiet", "rules", *args)
    assert result.returncode == 0, result.stderr
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def test_dry_run_of_the_default_benchmark_plans_every_run():
    counts = planned_jobs("--forceall")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    runs = len(config["rewards"]) * len(config["methods"]) * len(config["seeds"])
    # one process per run: the train job also scores its samples (no metrics job of its own)
    assert counts.get("train") == runs and "metrics" not in counts


@pytest.fixture
def bad_config(tmp_path):
    def write(patch: dict) -> Path:
        config = yaml.safe_load((REPO / "config/config.yaml").read_text())
        for key, value in patch.items():
            if isinstance(value, dict):
                config[key].update(value)
            else:
                config[key] = value
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"methods": ["vggflow", "reefl"]},
         "unknown method(s) 'reefl'; available methods: "
         + ", ".join(sorted(p.stem for p in (REPO / "config/methods").glob("*.yaml")))),
        ({"rewards": ["margin", "aesthetics"]}, "unknown reward(s) 'aesthetics'"),
        ({"train": {"max_step": 10}}, "unknown key(s) 'max_step' in train; allowed keys:"),
        ({"train": {"max_steps": 0}}, "train.max_steps: 0 is less than the minimum of 1"),
        ({"train": {"max_steps": -5}}, "train.max_steps: -5 is less than the minimum of 1"),
        ({"ablations": {"variants": {"big": {"betaa": 2.0}}}},
         "unknown key(s) 'betaa' in <top level>; allowed keys:"),
        ({"ablations": {"reward": "aesthetic"}}, "unknown reward(s) 'aesthetic'"),
        ({"suite": "toy2d"}, "resources: 'toy2d' is a required property"),
        ({"sweep": {"grid": {"reefl": {"lr": [1.0e-4]}}, "per_reward": {}}},
         "config key 'sweep.grid' ("),
        ({"sweep": {"grid": {"refl": {"lr": [1.0e-4, -1.0]}}, "per_reward": {}}},
         "lr: -1.0 is less than or equal to the minimum of 0"),
        ({"sweep": {"grid": {"refl": {"betta": [1.0]}}, "per_reward": {}}},
         "unknown key(s) 'betta'"),
        ({"sweep": {"per_reward": {"aesthetic": {}}}}, "unknown reward(s) 'aesthetic'"),
        ({"sweep": {"grid": {"refl": {"lr": [1.0e-4]}}}},
         "'sweep.per_reward.margin' (of 'sweep.grid'): unknown method(s) 'adjoint_matching'"),
    ],
)
def test_bad_config_stops_before_any_job(bad_config, tmp_path, patch, message):
    result = snakemake("-n", "--cores", "1", "--configfile", str(bad_config(patch)),
                       "--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile"))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Config error, nothing was run." in output
    assert message in output, output
    assert not (tmp_path / "results").exists()


def test_ablations_target_plans_one_run_per_variant_and_seed():
    result = snakemake("ablations", "-n", "--forceall", "--cores", "2", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())["ablations"]
    expected = len(config["variants"]) * len(config["seeds"])
    assert f"train {expected}" in " ".join(result.stdout.split())


def test_sweep_target_plans_every_grid_point_per_reward_and_seed():
    result = snakemake("sweep", "-n", "--forceall", "--cores", "2", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    sweep, expected = config["sweep"], 0
    for method, grid in sweep["grid"].items():
        for reward in config["rewards"]:
            merged = {**grid, **sweep.get("per_reward", {}).get(reward, {}).get(method, {})}
            expected += int(np.prod([len(values) for values in merged.values()]))
    expected *= len(sweep["seeds"])
    planned = " ".join(result.stdout.split())
    assert f"train {expected}" in planned and "select_sweep_winners 1" in planned


def test_toy2d_workflow_and_sweep_run_in_their_own_directory(tmp_path):
    result = snakemake("--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile"),
                       "--configfile", str(REPO / ".test/config_toy2d/config.yaml"),
                       "--cores", "2", "all", "sweep")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    metrics = pd.read_csv(tmp_path / "results/metrics/all.csv")
    assert set(metrics["method"]) == {"vggflow", "vggflow_pmp"}
    assert {"mean_0", "var_0", "fd_prior_points", "reward_linear"} <= set(metrics["metric"])
    assert (tmp_path / "results/figures/convergence_quadratic.png").exists()
    settings = pd.read_csv(tmp_path / "results/sweep/settings.csv")
    assert sorted(settings["variant"].unique()) == ["lr=0.001", "lr=0.003"]
    assert (settings.groupby("reward")["winner"].sum() == 1).all()
    winners = yaml.safe_load((tmp_path / "results/sweep/winners.yaml").read_text())
    assert set(winners["vggflow"]["per_reward"]) == {"linear", "quadratic"}
    assert (tmp_path / "results/figures/sweep.png").exists()


def test_tiny_workflow_runs_end_to_end():
    workdir = REPO / ".test"
    for generated in ("results", "resources", "logs", "benchmarks", ".snakemake"):
        shutil.rmtree(workdir / generated, ignore_errors=True)
    result = snakemake("--directory", ".test", "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for path in ("results/tables/summary.csv", "results/tables/summary.md",
                 "results/figures/convergence_margin.png", "results/figures/convergence_margin.pdf",
                 "results/figures/convergence_thickness.png", "results/metrics/all.csv",
                 "results/runs/margin/vggflow/seed0/provenance.json",
                 "results/runs/margin/vggflow/seed0/lora/step4/adapter_model.safetensors",
                 "benchmarks/train/margin/vggflow/seed0.tsv", "logs/train/margin/refl/seed0.log",
                 "results/tables/table1_last.tex", "results/tables/table1_updates.md",
                 "results/tables/table1_gpu_hours.csv", "results/tables/selected_checkpoints.csv",
                 "results/figures/wallclock_margin.pdf", "results/figures/pareto_thickness.png",
                 "results/figures/grid_margin.png", "results/figures/evolution_margin/refl.png"):
        assert (workdir / path).exists(), path
    metrics = pd.read_csv(workdir / "results/metrics/all.csv")
    assert set(metrics["method"]) == {"vggflow", "refl", "draft", "adjoint_matching"}
    assert sorted(metrics["step"].unique()) == [0, 2, 4]
    assert {"reward_margin", "reward_thickness", "diversity_evalnet", "fd_prior_evalnet",
            "fd_ref_evalnet"} <= set(metrics["metric"])
    base = metrics[(metrics["step"] == 0) & (metrics["metric"] == "fd_prior_evalnet")]
    assert (base["value"].abs() < 1e-6).all()  # step 0 is the base model itself
    table = pd.read_csv(workdir / "results/tables/summary.csv")
    assert {"reward", "method", "metric", "mean", "std", "seeds", "step"} <= set(table.columns)
    assert set(table["method"]) == {"base", "vggflow", "refl", "draft", "adjoint_matching"}
    compute = pd.read_csv(workdir / "results/bench/methods.csv")
    assert set(compute["method"]) == {"vggflow", "refl", "draft", "adjoint_matching"}
    assert (compute["seconds_per_update"] > 0).all()
    cost = pd.read_csv(workdir / "results/bench/reward_cost.csv")
    assert len(cost) == 2 * 4 and (cost["train_s"] > 0).all()  # 2 rewards x 4 methods
    # nothing left to do: a second invocation schedules no job
    again = snakemake("--directory", ".test", "--cores", "2", "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def console_problems(html: Path) -> list[str]:
    """Console messages of a page loaded in headless Chromium that report an error."""
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=10000", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and len(result.stdout) > 1000, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if "CONSOLE" in line
            and any(word in line for word in ("Uncaught", "Error", "error", "Failed"))]


def test_the_html_report_loads_in_a_browser_without_console_errors(tmp_path):
    """snakemake --report on the finished .test run (test_tiny_workflow_runs_end_to_end), opened
    in headless Chromium (scripts/ci installs Debian's chromium; required when CI=true)."""
    import base64

    if shutil.which("chromium") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium is missing; .ci/run installs it")
        pytest.skip("no chromium (apt-get install chromium)")
    if not (REPO / ".test/results/tables/summary.csv").exists():
        pytest.skip("needs the finished .test run of test_tiny_workflow_runs_end_to_end")
    broken = tmp_path / "broken.html"  # the check itself can fail
    broken.write_text("<html><body>" + "<p>x</p>" * 200
                      + "<script>missingFunction();</script></body></html>")
    assert console_problems(broken)
    report = REPO / ".test/results/report.html"
    result = snakemake("--directory", ".test", "--report", "results/report.html", "--cores", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert console_problems(report) == []
    # the report is a JavaScript application: check the convergence figure's bytes in the file
    figure = REPO / ".test/results/figures/convergence_margin.png"
    assert base64.b64encode(figure.read_bytes()).decode() in report.read_text()


def test_bench_target_measures_every_method():
    """`snakemake bench` on the finished .test run: one row per method, nothing retrained."""
    if not (REPO / ".test/results/tables/summary.csv").exists():
        pytest.skip("needs the finished .test run of test_tiny_workflow_runs_end_to_end")
    assert planned_jobs("--directory", ".test", "bench", "--forcerun", "bench_updates") == {
        "bench_updates": 1, "bench": 1}
    result = snakemake("--directory", ".test", "bench", "--cores", "1", "--forcerun",
                       "bench_updates")
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((REPO / ".test/config/config.yaml").read_text())
    table = pd.read_csv(REPO / ".test/results/bench/update_cost_digits.csv")
    assert table["method"].tolist() == config["methods"]
    assert (table["seconds_per_update"] > 0).all() and (table["gflop_per_update"] > 0).all()
    assert (REPO / ".test/results/bench/update_cost_digits.png").stat().st_size > 0
    regions = pd.read_csv(REPO / ".test/results/bench/update_regions_digits.csv")
    flow_model_updates = regions[regions["path"] == "update_lora"]
    assert flow_model_updates["method"].tolist() == config["methods"]
    assert (flow_model_updates["seconds_per_update"] > 0).all()


def test_sd3_scale_bench_makes_its_random_weights_first(tmp_path):
    """config/bench_sd3.yaml (GPU): rule make_random_sd3 writes SD3-medium-shaped files with the
    config's rewards, then one bench job measures the four methods; nothing is fetched."""
    args = ("--directory", str(tmp_path), "bench", "--configfile",
            str(REPO / "config/bench_sd3.yaml"))
    assert planned_jobs(*args) == {"make_random_sd3": 1, "resolve_run_config": 4,
                                   "bench_updates": 1, "bench": 1}
    result = snakemake("-n", "-p", "--cores", "1", *args)
    assert result.returncode == 0, result.stderr
    assert ("make-random-sd3 --out-dir resources/sd3-random --shape medium --rewards aesthetic"
            in result.stdout)


def test_the_train_rule_passes_snakemakes_attempt_to_the_trainer():
    """`--attempt` tells the trainer whether a job is a retry (which publishes a finished run's
    kept outputs again) or a new job (which trains from scratch)."""
    result = snakemake("-n", "-p", "--directory", ".test", "--forcerun", "train", "--cores", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    commands = [line for line in result.stdout.splitlines() if " train --config " in line]
    assert commands and all(" --attempt 1 " in line for line in commands)


def test_single_seed_reruns_plan_only_what_they_name(tmp_path):
    """The README's re-run commands, checked by their dry-run job lists on the finished .test run
    (run after test_tiny_workflow_runs_end_to_end)."""
    if not (REPO / ".test/results/tables/summary.csv").exists():
        pytest.skip("needs the finished .test run of test_tiny_workflow_runs_end_to_end")
    run = "results/runs/margin/refl/seed0/train_log.csv"
    # retrain one (reward, method, seed) and nothing else
    assert planned_jobs("--directory", ".test", run, "--forcerun", "train") == {"train": 1}
    # retrain it (the job scores its samples too) and redo only the tables and figures
    analysis = {"collect_times", "make_tables", "make_compute_table", "make_reward_cost_table",
                "make_paper_tables", "select_checkpoints", "plot_convergence", "plot_wallclock",
                "plot_pareto", "plot_sample_evolution", "plot_method_grid"}
    downstream = planned_jobs("--directory", ".test", "-R", run)
    assert downstream["train"] == 1
    assert set(downstream) == {"train", "collect_metrics", "all"} | analysis
    # regenerate every table and figure from the existing metrics: no training or sampling
    figures = planned_jobs("--directory", ".test", "figures", "--forcerun", *sorted(analysis))
    assert set(figures) == analysis | {"figures"}
    # editing one method's hyperparameters reruns that method's runs only
    methods = tmp_path / "methods"
    shutil.copytree(REPO / "config/methods", methods)
    unchanged = planned_jobs("--directory", ".test", "--config", f"method_dir={methods}")
    assert "train" not in unchanged
    # re-saving a method file with its keys in another order (and its comments gone) changes
    # nothing: the resolved config is written with sorted keys
    vggflow = yaml.safe_load((methods / "vggflow.yaml").read_text())
    reordered = dict(reversed(list(vggflow.items())))
    (methods / "vggflow.yaml").write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert "resolve_run_config" not in planned_jobs("--directory", ".test", "--config",
                                                    f"method_dir={methods}")
    refl = yaml.safe_load((methods / "refl.yaml").read_text())
    refl["per_reward"]["margin"]["lr"] *= 2
    (methods / "refl.yaml").write_text(yaml.safe_dump(refl, sort_keys=False))
    edited = planned_jobs("--directory", ".test", "--config", f"method_dir={methods}")
    assert edited["train"] == 1 and edited["resolve_run_config"] == 1  # refl on margin only
    # a code change reruns a method once its code_version is bumped: all of its runs, no others
    refl["code_version"] += 1
    (methods / "refl.yaml").write_text(yaml.safe_dump(refl, sort_keys=False))
    bumped = planned_jobs("--directory", ".test", "--config", f"method_dir={methods}")
    assert bumped["train"] == 2 and bumped["resolve_run_config"] == 2  # refl on both rewards


def paper_placeholders(root: Path) -> None:
    """Empty stand-ins for every file of config/paper.yaml under ``root`` (folders get their
    marker file), so that the workflow plans the paper's jobs without the real weights."""
    from vggflow.config import DREAMSIM_FILES
    from vggflow.fetch import resource_entries

    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    for entry in resource_entries(config["resources"]["sd3"]):
        names = DREAMSIM_FILES if entry.key == "features.dreamsim" else [entry.marker or ""]
        for name in names:
            target = root / entry.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}" if entry.marker else "")


def test_the_paper_config_stops_before_any_job_when_a_file_is_missing(tmp_path):
    paper = str(REPO / "config/paper.yaml")
    (tmp_path / "resources/prompts").mkdir(parents=True)
    shutil.copy(REPO / "resources/prompts/simple_animals.txt", tmp_path / "resources/prompts")
    result = snakemake("--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile"),
                       "--configfile", paper, "--cores", "1")
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "resources/sd3/stable-diffusion-3-medium-diffusers (missing)" in message
    assert "snakemake fetch_sd3_resources --cores 1 --configfile config/paper.yaml" in message
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
    # the fetch rule itself is not blocked by the check
    fetch = snakemake("-n", "--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile"),
                      "--configfile", paper, "--cores", "1", "fetch_sd3_resources")
    assert fetch.returncode == 0, fetch.stderr
    # with every file present the paper's matrix is planned: rewards x methods x seeds runs
    paper_placeholders(tmp_path)
    counts = planned_jobs("--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile"),
                          "--configfile", paper)
    config = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    runs = len(config["rewards"]) * len(config["methods"]) * len(config["seeds"])
    assert counts["train"] == runs == 45
    assert counts["sample_base"] == len(config["rewards"])


def test_the_slurm_profile_selects_the_paper_config(tmp_path):
    paper_placeholders(tmp_path)
    result = snakemake("-n", "--quiet", "rules", "--profile", str(REPO / "profiles/slurm"),
                       "--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config/paper.yaml" in result.stdout + result.stderr
    planned = " ".join(result.stdout.split())
    assert "train 45" in planned


def test_tiny_sd3_workflow_trains_samples_and_evaluates(tmp_path):
    """SD3's classes with tiny random weights through make_random_sd3, training, sampling, metrics
    and tables; the exported LoRAs are diffusers-format files; 8-bit evaluation images."""
    result = snakemake("--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile"),
                       "--configfile", str(REPO / ".test/config_tiny_sd3/config.yaml"),
                       "--cores", "2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    metrics = pd.read_csv(tmp_path / "results/metrics/all.csv")
    assert set(metrics["method"]) == {"vggflow", "refl"}
    assert {"reward_aesthetic", "reward_pickscore", "diversity_lite0",
            "fd_prior_lite0"} <= set(metrics["metric"])
    assert metrics["value"].notna().all()
    for run in ("aesthetic/vggflow", "pickscore/refl"):
        lora = tmp_path / f"results/runs/{run}/seed0/lora/step2/pytorch_lora_weights.safetensors"
        assert lora.is_file()
    assert (tmp_path / "results/tables/summary.csv").is_file()
    # the .test config stores 8-bit images; a run's step 0 is the base model's images exactly
    # (same noise and the same eval.batch_size batches), hence fd_prior 0 there
    import torch

    run_samples = torch.load(tmp_path / "results/runs/aesthetic/vggflow/seed0/samples.pt",
                             weights_only=False)
    base_samples = torch.load(tmp_path / "results/base/aesthetic/samples.pt", weights_only=False)
    assert run_samples["images"].dtype == base_samples["images"].dtype == torch.uint8
    assert torch.equal(run_samples["images"][0], base_samples["images"][0])
    assert not torch.equal(run_samples["images"][-1], base_samples["images"][0])
    at_start = metrics[(metrics["step"] == 0) & metrics["metric"].str.startswith("fd_prior")]
    assert len(at_start) and (at_start["value"] == 0).all()
    # the documented inference path: a run's config and one of its LoRAs -> a PNG grid
    from conftest import run_cli
    from PIL import Image

    run = "results/runs/aesthetic/vggflow/seed0"
    sample = run_cli("sample", "--config", f"{run}/config.yaml", "--lora", f"{run}/lora/step2",
                     "--prompt", "a cat", "--prompt", "a dog", "--images-per-prompt", "3",
                     "--out", "grid.png", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr[-3000:]
    width, height = Image.open(tmp_path / "grid.png").size
    assert width > 3 * 32 and 2 * 32 < height < 3 * 32  # 3 columns, 2 rows of 32 px images


@pytest.mark.parametrize("fallback", [None, "lite0"])
def test_a_feature_network_without_weights_stops_the_workflow_unless_the_fallback_is_chosen(
        tmp_path, fallback):
    config = yaml.safe_load((REPO / ".test/config_tiny_sd3/config.yaml").read_text())
    config["eval"].update(features=["inception"], feature_fallback=fallback)
    config["resources"]["tiny-sd3"]["features"] = {"inception": "resources/no/inception.pth"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--directory", str(tmp_path), "--snakefile", str(REPO / "Snakefile"),
                       "--configfile", str(tmp_path / "config.yaml"), "--cores", "1")
    if fallback is None:
        assert result.returncode != 0
        assert "resources/no/inception.pth are missing" in result.stdout + result.stderr
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "train" in result.stdout
