# All Python helpers of the workflow: config validation, the run table, path and target functions.
# The package does the work; these functions only translate config into files and wildcards.
import re
import sys
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))

from vggflow.fetch import check_resources
from vggflow.config import (
    ConfigError,
    check_names,
    fill_defaults,
    load_yaml,
    method_file_schema,
    resolve_base_config,
    resolve_run_config,
    suite_resources,
    sweep_grid,
    sweep_variants,
    validate,
    yaml_text,
)

REPO = Path(workflow.basedir)
SCHEMAS = REPO / "workflow" / "schemas"


def _load_checked_config(raw):
    """Validate the experiment config and every method/reward file it names; stop on problems."""
    schema = load_yaml(SCHEMAS / "config.schema.yaml")
    validate(raw, schema, "the experiment config (config/config.yaml or --configfile)")
    checked = fill_defaults(raw, schema)
    method_dir = Path(checked.get("method_dir", REPO / "config" / "methods"))
    reward_dir = Path(checked.get("reward_dir", REPO / "config" / "rewards"))
    available_methods = sorted(p.stem for p in method_dir.glob("*.yaml"))
    check_names(
        "method", checked["methods"], available_methods, f"config key 'methods' ({method_dir})"
    )
    available = sorted(p.stem for p in reward_dir.glob("*.yaml"))
    check_names("reward", checked["rewards"], available, f"config key 'rewards' ({reward_dir})")
    swept = list(checked.get("sweep", {}).get("grid", {}))
    check_names("method", swept, available_methods, f"config key 'sweep.grid' ({method_dir})")
    method_schemas = load_yaml(SCHEMAS / "method.schema.yaml")
    methods = {}
    for name in dict.fromkeys(checked["methods"] + swept):
        path = method_dir / f"{name}.yaml"
        methods[name] = load_yaml(path) or {}
        validate(methods[name], method_file_schema(method_schemas, name), str(path))
    if "ablations" in checked:
        _check_ablations(checked, methods, method_schemas)
    if "sweep" in checked:
        _check_sweep(checked, method_schemas)
    reward_schema = load_yaml(SCHEMAS / "reward.schema.yaml")
    for name in checked["rewards"]:
        path = reward_dir / f"{name}.yaml"
        reward_file = load_yaml(path) or {}
        validate(reward_file, reward_schema, str(path))
        suites = reward_file["suite"]
        if checked["suite"] not in ([suites] if isinstance(suites, str) else suites):
            raise ConfigError(
                f"{path}: reward {name!r} belongs to suite {suites!r}, "
                f"but config key 'suite' is {checked['suite']!r}"
            )
        if name not in suite_resources(checked).get("rewards", {}):
            raise ConfigError(
                f"config key 'resources.{checked['suite']}.rewards' has no entry for reward "
                f"{name!r}; add resources.{checked['suite']}.rewards.{name}"
            )
    return checked, methods


def _check_ablations(checked, methods, method_schemas):
    ablations = checked["ablations"]
    where = "config key 'ablations'"
    check_names("method", [ablations["method"]], list(methods), f"{where}.method (of 'methods')")
    check_names(
        "reward", [ablations["reward"]], checked["rewards"], f"{where}.reward (of 'rewards')"
    )
    for variant, values in ablations["variants"].items():
        _check_overrides(ablations["method"], values, method_schemas, f"{where}.variants.{variant}")


def _check_sweep(checked, method_schemas):
    sweep = checked["sweep"]
    for reward, grids in sweep.get("per_reward", {}).items():
        where = f"config key 'sweep.per_reward.{reward}'"
        check_names("reward", [reward], checked["rewards"], f"{where} (of 'rewards')")
        check_names("method", list(grids), list(sweep["grid"]), f"{where} (of 'sweep.grid')")
    for method, reward in product(sweep["grid"], checked["rewards"]):
        for variant, values in sweep_variants(sweep_grid(sweep, method, reward)).items():
            where = f"config key 'sweep' ({method} on {reward}, setting {variant})"
            _check_overrides(method, values, method_schemas, where)


def _check_overrides(method, overrides, method_schemas, where):
    """Overrides of a method's hyperparameters: its keys, with valid values."""
    schema = method_file_schema(method_schemas, method)["properties"]["per_reward"]
    validate(overrides, schema["additionalProperties"], where)


try:
    CONFIG, METHOD_FILES = _load_checked_config(config)
except ConfigError as error:
    raise WorkflowError(f"Config error, nothing was run.\n{error}") from None

SUITE = CONFIG["suite"]
RUNS = [
    {"reward": r, "method": m, "seed": s}
    for r, m, s in product(CONFIG["rewards"], CONFIG["methods"], CONFIG["seeds"])
]
DIGITS = CONFIG["digits"]
RESOURCES = suite_resources(CONFIG)
# Sample figures show the first training seed; Table 1 is written at three budgets (the last
# update, matched updates, matched training time).
FIRST_SEED = CONFIG["seeds"][0]
BUDGETS = ("last", "updates", "gpu_hours")
TABLE_FORMATS = ("csv", "md", "tex")
SELECTION = CONFIG["selection"]
BENCH = CONFIG["bench"]
# SD3 files with random weights, of a shape: tiny-sd3's (tiny), or sd3's when resources.sd3 has
# random_weights (medium: SD3 medium's shapes, for GPU benchmarks). Rule make_random_sd3 writes
# every file into the pipeline's parent folder, with the resources block it wrote as
# resources.yaml (config paths must follow that layout).
RANDOM_SD3_SHAPE = {"tiny-sd3": "tiny", "sd3": RESOURCES.get("random_weights")}.get(SUITE)
RANDOM_SD3_DIR = str(Path(RESOURCES["pipeline"]).parent) if RANDOM_SD3_SHAPE else None
RANDOM_SD3_MANIFEST = f"{RANDOM_SD3_DIR}/resources.yaml"


ABLATION = CONFIG.get("ablations")
ABLATION_RUNS = [
    {"reward": ABLATION["reward"], "method": f"{ABLATION['method']}@{variant}", "seed": seed}
    for variant in (ABLATION["variants"] if ABLATION else [])
    for seed in ABLATION["seeds"]
]
# Hyperparameter overrides of every variant run, by method and variant name.
VARIANTS = {}
if ABLATION:
    VARIANTS.setdefault(ABLATION["method"], {}).update(ABLATION["variants"])
SWEEP = CONFIG.get("sweep")


def _sweep_runs():
    """Every run of the sweep (grid point x reward x seed); registers the overrides in VARIANTS."""
    runs = []
    for method, reward in product(SWEEP["grid"] if SWEEP else [], CONFIG["rewards"]):
        settings = sweep_variants(sweep_grid(SWEEP, method, reward))
        VARIANTS.setdefault(method, {}).update(settings)
        runs += [
            {"reward": reward, "method": f"{method}@{variant}", "seed": seed}
            for variant in settings
            for seed in SWEEP["seeds"]
        ]
    return runs


SWEEP_RUNS = _sweep_runs()
SWEEP_METHODS = {run["method"] for run in SWEEP_RUNS}


wildcard_constraints:
    reward="|".join(CONFIG["rewards"]),
    method="|".join(
        re.escape(name)
        for name in dict.fromkeys(
            CONFIG["methods"] + [r["method"] for r in ABLATION_RUNS + SWEEP_RUNS]
        )
    ),
    seed=r"\d+",
    budget="|".join(BUDGETS),


def run_config(wildcards):
    """The merged config of one run (the resolve rule's params, so edits rerun only this run).

    An ablation or sweep run's method wildcard is `<method>@<variant>`: the method's config for
    that reward, then the variant's overrides.
    """
    method, _, variant = wildcards.method.partition("@")
    return resolve_run_config(
        CONFIG,
        METHOD_FILES[method],
        wildcards.reward,
        method,
        int(wildcards.seed),
        VARIANTS[method][variant] if variant else None,
        generated=[RANDOM_SD3_DIR] if RANDOM_SD3_DIR else [],
    )


def divergence_flag(wildcards):
    """A sweep run records a divergence (non-finite loss) as its result; any other run fails."""
    return "--record-divergence" if wildcards.method in SWEEP_METHODS else ""


def base_config(wildcards):
    return resolve_base_config(CONFIG, wildcards.reward)


# The resolve rules write this YAML with a shell command: Python in a `run` block would start a
# whole Snakemake process per job (about 10 s each on a 2-core machine).
def run_config_yaml(wildcards):
    return yaml_text(run_config(wildcards))


def base_config_yaml(wildcards):
    return yaml_text(base_config(wildcards))


RESOURCES_YAML = yaml_text(RESOURCES)


def random_sd3_rewards_option():
    """Which rewards make_random_sd3 writes; all three for tiny-sd3 (the tests use each), the
    config's rewards (the ones its runs train on and are scored on) for the medium shape."""
    return "" if RANDOM_SD3_SHAPE == "tiny" else "--rewards " + " ".join(CONFIG["rewards"])


def suite_files(wildcards=None):
    """The files a suite's jobs read that rules make: the digits networks, the SD3 files with
    random weights (tiny-sd3, or sd3 with resources.sd3.random_weights).

    sd3 otherwise: none (its files are fetched once by fetch_sd3_resources, not made per run);
    a missing one stops the workflow here, while the jobs are planned, naming the file and the
    command.
    toy2d is analytic and needs none.
    """
    if SUITE == "digits":
        return [
            RESOURCES["data"],
            RESOURCES["base_model"],
            RESOURCES["eval_net"],
            *RESOURCES["rewards"].values(),
        ]
    if RANDOM_SD3_SHAPE:
        return [RANDOM_SD3_MANIFEST]
    if SUITE == "sd3":
        # feature weights: checked by resolve_feature_backends, which may fall back to lite0
        try:
            check_resources({k: v for k, v in RESOURCES.items() if k != "features"})
        except ConfigError as error:
            raise WorkflowError(str(error)) from None
    return []


def metric_targets(runs=RUNS):
    return [
        f"results/metrics/{run['reward']}/{run['method']}/seed{run['seed']}.csv" for run in runs
    ]


def ablation_metric_targets():
    return metric_targets(ABLATION_RUNS)


def sweep_metric_targets():
    return metric_targets(SWEEP_RUNS)


def sweep_targets(wildcards):
    if not SWEEP:
        raise WorkflowError(
            "config has no 'sweep' block: add sweep.grid (see config/README.md) to run the sweep"
        )
    return [
        "results/sweep/winners.md",
        "results/sweep/winners.yaml",
        "results/figures/sweep.png",
    ]


def sweep_limits():
    """The winner rule's thresholds (vggflow.analysis.sweep.settings_table's keywords)."""
    if not SWEEP:
        return {}
    return {
        "min_diversity_ratio": SWEEP["min_diversity_ratio"],
        "max_fd_prior": SWEEP.get("max_fd_prior"),
    }


def variant_names(runs):
    """The variant of each run of an ablation or sweep, in the order of its metric targets."""
    return [run["method"].partition("@")[2] for run in runs]


def train_targets(name="train_log.csv"):
    """Each run's train output `name` (train_log.csv, provenance.json, ...), in RUNS order."""
    return [
        f"results/runs/{run['reward']}/{run['method']}/seed{run['seed']}/{name}" for run in RUNS
    ]


def train_benchmarks():
    """The train jobs' benchmark tables (not outputs: read where they exist)."""
    return [
        f"benchmarks/train/{run['reward']}/{run['method']}/seed{run['seed']}.tsv" for run in RUNS
    ]


# How jobs run `python -m vggflow`: directly, or through the fork server (config `forkserver`).
VGGFLOW = "python -m vggflow.forkserver" if CONFIG["forkserver"] else "python -m vggflow"


def train_launcher(wildcards, resources):
    """VGGFLOW, or `accelerate launch -m vggflow` with one process per GPU (data parallelism).

    The GPU count is the `gpu` resource, or the count of a `gres` such as "gpu:a100:4".
    """
    gres = re.search(r"gpu(?::[^:,]+)?:(\d+)", str(resources.get("gres", "") or ""))
    gpus = int(gres.group(1)) if gres else int(resources.get("gpu", 0) or 0)
    if gpus <= 1:
        return VGGFLOW
    return (
        f"accelerate launch --multi_gpu --num_processes {gpus} --num_machines 1"
        " --mixed_precision no --dynamo_backend no --main_process_port 0 -m vggflow"
    )


def bench_configs():
    """The first reward and seed's run config of every method (target `bench`)."""
    return [
        f"results/runs/{CONFIG['rewards'][0]}/{method}/seed{FIRST_SEED}/config.yaml"
        for method in CONFIG["methods"]
    ]


def grid_samples(wildcards):
    """The first seed's evaluation samples of every method trained on the reward."""
    return [
        f"results/runs/{wildcards.reward}/{method}/seed{FIRST_SEED}/samples.pt"
        for method in CONFIG["methods"]
    ]


def table_targets():
    return [
        "results/tables/summary.csv",
        "results/tables/summary.md",
        "results/bench/methods.csv",
        "results/bench/methods.md",
        "results/bench/reward_cost.csv",
        "results/bench/reward_cost.md",
        "results/tables/selected_checkpoints.csv",
        *(f"results/tables/table1_{budget}.{ext}" for budget in BUDGETS for ext in TABLE_FORMATS),
    ]


def figure_targets():
    """Per reward: convergence, wall-clock and Pareto plots; sample grids and evolution strips
    for image suites (toy2d's samples are points)."""
    per_reward = ["convergence_{}.png", "wallclock_{}.png", "pareto_{}.png"]
    if SUITE != "toy2d":
        per_reward += ["grid_{}.png", "evolution_{}"]
    return [f"results/figures/{name.format(r)}" for name in per_reward for r in CONFIG["rewards"]]
