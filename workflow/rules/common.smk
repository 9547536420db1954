# All Python helpers of the workflow: config validation, the run table, path and target functions.
# The package does the work; these functions only translate config into files and wildcards.
import re
import sys
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))

from vggflow.config import (
    ConfigError,
    check_names,
    fill_defaults,
    load_yaml,
    method_file_schema,
    resolve_base_config,
    resolve_run_config,
    suite_resources,
    validate,
    write_yaml_atomic,
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
    available = sorted(p.stem for p in method_dir.glob("*.yaml"))
    check_names("method", checked["methods"], available, f"config key 'methods' ({method_dir})")
    available = sorted(p.stem for p in reward_dir.glob("*.yaml"))
    check_names("reward", checked["rewards"], available, f"config key 'rewards' ({reward_dir})")
    method_schemas = load_yaml(SCHEMAS / "method.schema.yaml")
    methods = {}
    for name in checked["methods"]:
        path = method_dir / f"{name}.yaml"
        methods[name] = load_yaml(path) or {}
        validate(methods[name], method_file_schema(method_schemas, name), str(path))
    if "ablations" in checked:
        _check_ablations(checked, methods, method_schemas)
    reward_schema = load_yaml(SCHEMAS / "reward.schema.yaml")
    for name in checked["rewards"]:
        path = reward_dir / f"{name}.yaml"
        reward_file = load_yaml(path) or {}
        validate(reward_file, reward_schema, str(path))
        if reward_file["suite"] != checked["suite"]:
            raise ConfigError(
                f"{path}: reward {name!r} belongs to suite {reward_file['suite']!r}, "
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
    schema = method_file_schema(method_schemas, ablations["method"])
    overrides = schema["properties"]["per_reward"]["additionalProperties"]
    for variant, values in ablations["variants"].items():
        validate(values, overrides, f"{where}.variants.{variant}")


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


ABLATION = CONFIG.get("ablations")
ABLATION_RUNS = [
    {"reward": ABLATION["reward"], "method": f"{ABLATION['method']}@{variant}", "seed": seed}
    for variant in (ABLATION["variants"] if ABLATION else [])
    for seed in ABLATION["seeds"]
]


wildcard_constraints:
    reward="|".join(CONFIG["rewards"]),
    method="|".join(
        re.escape(name) for name in CONFIG["methods"] + [r["method"] for r in ABLATION_RUNS]
    ),
    seed=r"\d+",


def run_config(wildcards):
    """The merged config of one run (the resolve rule's params, so edits rerun only this run).

    An ablation run's method wildcard is `<method>@<variant>`: the method's config for that
    reward, then the variant's overrides.
    """
    method, _, variant = wildcards.method.partition("@")
    resolved = resolve_run_config(
        CONFIG, METHOD_FILES[method], wildcards.reward, method, int(wildcards.seed)
    )
    if variant:
        resolved["method"].update(ABLATION["variants"][variant])
    return resolved


def base_config(wildcards):
    return resolve_base_config(CONFIG, wildcards.reward)


def write_config(data, path):
    write_yaml_atomic(data, path)


def suite_files(wildcards=None):
    """Every network and data file of the suite (toy2d is analytic and needs none)."""
    if SUITE != "digits":
        return []
    return [
        RESOURCES["data"],
        RESOURCES["base_model"],
        RESOURCES["eval_net"],
        *RESOURCES["rewards"].values(),
    ]


def metric_targets(runs=RUNS):
    return [
        f"results/metrics/{run['reward']}/{run['method']}/seed{run['seed']}.csv" for run in runs
    ]


def ablation_metric_targets():
    return metric_targets(ABLATION_RUNS)


def ablation_variants():
    """The variant of each ablation metrics file, in the order of ablation_metric_targets()."""
    return [run["method"].partition("@")[2] for run in ABLATION_RUNS]


def train_targets():
    return [
        f"results/runs/{run['reward']}/{run['method']}/seed{run['seed']}/train_log.csv"
        for run in RUNS
    ]


def table_targets():
    return [
        "results/tables/summary.csv",
        "results/tables/summary.md",
        "results/bench/methods.csv",
        "results/bench/methods.md",
    ]


def figure_targets():
    return [f"results/figures/convergence_{reward}.png" for reward in CONFIG["rewards"]]
