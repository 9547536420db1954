"""Config files: loading, validation with readable errors, the merge of one run's config.

Torch-free on purpose: the workflow's ``common.smk`` imports this module, so the rule that writes a
run's config and ``python -m vggflow train --config ...`` agree on the merge.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A config problem, with a message that names the key and says what is allowed."""


# ---------------------------------------------------------------------------------------------
# files


def load_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as handle:
        return yaml.safe_load(handle)


def yaml_text(data: Any) -> str:
    """The YAML text of a config file, keys in the given order (resolved configs: sorted)."""
    return yaml.safe_dump(data, sort_keys=False)


def write_yaml_atomic(data: Any, path: str | os.PathLike) -> None:
    """Write YAML to a temporary file beside ``path`` and rename it, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(yaml_text(data))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# merging


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """A copy of ``base`` with ``override`` merged in: mappings merge, other values replace."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def method_settings(method_file: Mapping, suite: str, reward: str) -> dict:
    """A method's hyperparameters for one suite and reward.

    Order: the file's top-level defaults, then ``per_suite[suite]``, then ``per_reward[reward]``.
    """
    body = {k: v for k, v in method_file.items() if k not in ("per_suite", "per_reward")}
    body = deep_merge(body, (method_file.get("per_suite") or {}).get(suite, {}))
    return deep_merge(body, (method_file.get("per_reward") or {}).get(reward, {}))


SHARED_BLOCKS = ("train", "sampler", "eval", "lora")


def sorted_keys(data: Any) -> Any:
    """``data`` with every mapping's keys in sorted order, so that the order in which a config
    file lists its keys never changes a resolved config (nor reruns the runs that read it)."""
    if isinstance(data, Mapping):
        return {key: sorted_keys(data[key]) for key in sorted(data)}
    if isinstance(data, list):
        return [sorted_keys(item) for item in data]
    return data


def resolve_run_config(
    config: Mapping,
    method_file: Mapping,
    reward: str,
    method: str,
    seed: int,
    overrides: Mapping | None = None,
    generated: Sequence[str] = (),
) -> dict:
    """The one config file a run reads: shared blocks of the experiment config, the suite's
    resources, the method's hyperparameters (defaults, then per suite, then per reward, then
    ``overrides``: an ablation's or sweep setting's), the seed. Keys are sorted. ``generated``:
    folders that workflow rules fill (their feature weights count as present).
    """
    suite = config["suite"]
    resolved: dict[str, Any] = {
        "suite": suite,
        "reward": reward,
        "rewards": list(config["rewards"]),
        "seed": int(seed),
        "method": {"name": method, **method_settings(method_file, suite, reward),
                   **(overrides or {})},
    }
    for block in SHARED_BLOCKS:
        resolved[block] = copy.deepcopy(dict(config[block]))
    blocks = suite_blocks(config, reward)
    if "features" in resolved["eval"]:
        resolved["eval"]["features"] = resolve_feature_backends(
            resolved["eval"], blocks["resources"], generated)
    return sorted_keys({**resolved, **blocks})


# Feature backends whose weights are files named in resources.<suite>.features.<backend>
# (clip defaults to the Aesthetic reward's CLIP ViT-L/14); the others ship with a package or
# the suite.
WEIGHTED_BACKENDS = ("clip", "inception", "dreamsim")
FALLBACK_BACKENDS = ("lite0",)
# What dreamsim(cache_dir=folder, dreamsim_type="ensemble") reads: its release zip's files, and
# torch hub's DINO repository and checkpoint (dreamsim makes the folder torch hub's directory).
DREAMSIM_FILES = ("dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar",
                  "clip_vitb16_pretrain.pth.tar", "ensemble_lora/adapter_config.json",
                  "facebookresearch_dino_main/hubconf.py",
                  "checkpoints/dino_vitbase16_pretrain.pth")


def missing_feature_files(backend: str, path: str | Path) -> list[str]:
    """The files of a backend's weights path that are not there (a folder backend: each file it
    reads, e.g. :data:`DREAMSIM_FILES`)."""
    path = Path(path)
    if backend == "dreamsim":
        return [str(path / name) for name in DREAMSIM_FILES if not (path / name).exists()]
    return [] if path.exists() else [str(path)]


def feature_weights_path(backend: str, resources: Mapping) -> str | None:
    """The weights file or folder of a feature backend, None for one that needs none."""
    if backend not in WEIGHTED_BACKENDS:
        return None
    path = (resources.get("features") or {}).get(backend)
    if path is None and backend == "clip":
        path = ((resources.get("rewards") or {}).get("aesthetic") or {}).get("clip")
    if path is None:
        raise ConfigError(f"eval.features asks for {backend!r} but the suite's resources name no "
                          f"file for it; add resources.<suite>.features.{backend}")
    return str(path)


def resolve_feature_backends(eval_block: Mapping, resources: Mapping,
                             generated: Sequence[str] = ()) -> list[str]:
    """The backends a run's metrics will use: ``eval.features`` whose weights are present (or lie
    under a folder of ``generated``, which workflow rules fill); a missing one is a ConfigError
    naming the file, unless ``eval.feature_fallback`` (lite0) explicitly replaces it."""
    fallback = eval_block.get("feature_fallback")
    if fallback is not None and fallback not in FALLBACK_BACKENDS:
        raise ConfigError(f"eval.feature_fallback must be one of {', '.join(FALLBACK_BACKENDS)} "
                          f"or null, got {fallback!r}")
    usable, replaced = [], []
    for backend in eval_block.get("features") or ():
        path = feature_weights_path(backend, resources)
        made = path is not None and any(Path(path).is_relative_to(folder) for folder in generated)
        missing = [] if path is None or made else missing_feature_files(backend, path)
        if not missing:
            usable.append(backend)
        elif fallback is not None:
            replaced.append(backend)
        else:
            raise ConfigError(
                f"eval.features asks for {backend!r}, whose weights {', '.join(missing)} are "
                "missing: fetch "
                "them (snakemake fetch_sd3_resources --cores 1 --configfile <this config>), or "
                "set eval.feature_fallback: lite0 to use EfficientNet-Lite0 features instead "
                "(not comparable with published numbers)")
    if replaced and fallback not in usable:
        usable.append(fallback)
    return usable


def sweep_grid(sweep: Mapping, method: str, reward: str) -> dict[str, list]:
    """A method's grid for one reward: ``sweep.grid.<method>``, with the value lists of
    ``sweep.per_reward.<reward>.<method>`` replacing those of the same keys."""
    per_reward = sweep.get("per_reward", {}).get(reward, {}).get(method, {})
    return {**sweep["grid"][method], **per_reward}


def sweep_variants(grid: Mapping[str, list]) -> dict[str, dict]:
    """Every combination of a sweep grid, named ``key=value`` joined by ``+`` (values as ``%g``).

    ``{"lr": [1e-4, 2e-4], "reward_scale": [0.5]}`` gives ``lr=0.0001+reward_scale=0.5`` and
    ``lr=0.0002+reward_scale=0.5``, each mapped to its hyperparameter overrides.
    """
    keys = sorted(grid)
    variants = {}
    for values in itertools.product(*(grid[key] for key in keys)):
        overrides = dict(zip(keys, values))
        name = "+".join(f"{key}={value:g}" for key, value in overrides.items())
        variants[name] = overrides
    return variants


def sweep_overrides(name: str) -> dict[str, float]:
    """The inverse of :func:`sweep_variants`' naming: ``lr=0.001+reward_scale=2`` -> overrides."""
    return {key: float(value) for key, value in (part.split("=", 1) for part in name.split("+"))}


def suite_resources(config: Mapping, reward: str | None = None) -> dict:
    """The ``resources`` block of the config's suite (resources are keyed by suite); given a
    reward, its ``prompts`` entry is that reward's prompt set (SD3 suites key them by reward)."""
    suite = config["suite"]
    if suite not in config["resources"]:
        raise ConfigError(f"config key resources.{suite} is missing (the resources of suite "
                          f"{suite!r})")
    resources = copy.deepcopy(dict(config["resources"][suite]))
    if reward is not None and "prompts" in resources:
        if reward not in resources["prompts"]:
            raise ConfigError(f"config key resources.{suite}.prompts has no prompt set for "
                              f"reward {reward!r}; add resources.{suite}.prompts.{reward}")
        resources["prompts"] = resources["prompts"][reward]
    return resources


def suite_blocks(config: Mapping, reward: str) -> dict:
    """A run's suite-specific blocks: its resources and, where the config has one, ``model``
    (the flow model's settings: SD3 resolution, dtype, decoders)."""
    blocks = {"resources": suite_resources(config, reward)}
    if config.get("model"):
        blocks["model"] = copy.deepcopy(dict(config["model"]))
    return blocks


def resolve_base_config(config: Mapping, reward: str) -> dict:
    """The config of the base model's evaluation samples for one reward (no method, no seed)."""
    resolved = {"suite": config["suite"], "reward": reward, "rewards": list(config["rewards"])}
    for block in ("sampler", "eval"):
        resolved[block] = copy.deepcopy(dict(config[block]))
    return sorted_keys({**resolved, **suite_blocks(config, reward)})


# ---------------------------------------------------------------------------------------------
# validation


def _key_path(path) -> str:
    parts = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "<top level>"


def _describe(error) -> str:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return (
            f"unknown key(s) {', '.join(map(repr, extra))} in {where}; "
            f"allowed keys: {', '.join(allowed)}"
        )
    if error.validator == "enum":
        return (
            f"{where}: {error.instance!r} is not allowed; allowed values: "
            f"{', '.join(map(str, error.validator_value))}"
        )
    if error.validator == "required":
        return f"{where}: {error.message}"
    return f"{where}: {error.message}"


def validate(instance: Any, schema: Mapping, source: str) -> None:
    """Validate against a JSON schema; raise ConfigError listing every problem by key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ConfigError(f"invalid config in {source}:\n{lines}")


def fill_defaults(instance: Any, schema: Mapping) -> Any:
    """A copy of ``instance`` with the schema's ``default`` values filled in, recursively."""
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return instance
    filled = dict(instance)
    for key, sub in schema.get("properties", {}).items():
        if key not in filled and "default" in sub:
            filled[key] = copy.deepcopy(sub["default"])
        if key in filled:
            filled[key] = fill_defaults(filled[key], sub)
    return filled


def check_names(kind: str, requested: list[str], available: list[str], where: str) -> None:
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ConfigError(
            f"{where}: unknown {kind}(s) {', '.join(map(repr, unknown))}; "
            f"available {kind}s: {', '.join(sorted(available))}"
        )


# ---------------------------------------------------------------------------------------------
# typed views of a resolved config

C = TypeVar("C")


def from_dict(cls: type[C], data: Mapping | None, where: str) -> C:
    """Build a dataclass from a mapping; unknown keys raise an error that lists the allowed ones."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
            f"allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj


def require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Trainer settings shared by all methods. Steps count optimizer updates."""

    max_steps: int = 400
    effective_batch_size: int = 32
    micro_batch_size: int = 32
    eval_every: int = 50
    checkpoint_every: int = 10
    log_every: int = 10
    device: str = "auto"
    fused_optimizer: bool | None = None  # AdamW's fused kernel; None: on CUDA only
    tf32: bool = False  # CUDA: fp32 matrix products (rewards, value net) on TF32 tensor cores

    def check(self, where: str) -> None:
        for name in ("max_steps", "effective_batch_size", "micro_batch_size", "eval_every",
                     "checkpoint_every", "log_every"):
            require(getattr(self, name) >= 1, f"{where}.{name}", "must be a positive integer")
        require(
            self.effective_batch_size % self.micro_batch_size == 0,
            f"{where}.micro_batch_size",
            f"{self.micro_batch_size} does not divide effective_batch_size "
            f"{self.effective_batch_size}",
        )

    @property
    def accumulation_steps(self) -> int:
        return self.effective_batch_size // self.micro_batch_size

    def eval_steps(self) -> list[int]:
        """Updates after which the model is sampled: 0, eval_every, ..., and always max_steps."""
        steps = list(range(0, self.max_steps, self.eval_every))
        return steps + [self.max_steps]


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Euler sampler: uniform grid of num_steps steps; classifier-free guidance scale (1 = off)."""

    num_steps: int = 20
    guidance_scale: float = 1.0

    def check(self, where: str) -> None:
        require(self.num_steps >= 1, f"{where}.num_steps", "must be a positive integer")
        require(self.guidance_scale >= 0, f"{where}.guidance_scale", "must be >= 0")


IMAGE_DTYPES = ("float32", "uint8")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation samples: fixed seed shared by all runs, images per prompt; the feature networks
    of the metrics (``features``: backend names, () = the suite's own; in a resolved config the
    backends that will run, :func:`resolve_feature_backends`); ``batch_size`` images sampled and
    decoded at a time (runs and base model alike); ``image_dtype`` of the stored images
    (``float32``, or ``uint8``: 8-bit levels as a PNG holds them, 4x smaller)."""

    seed: int = 1234
    images_per_prompt: int = 16
    features: tuple[str, ...] = ()
    feature_fallback: str | None = None
    batch_size: int = 32
    image_dtype: str = "float32"

    def check(self, where: str) -> None:
        require(self.images_per_prompt >= 2, f"{where}.images_per_prompt", "must be >= 2")
        require(self.batch_size >= 1, f"{where}.batch_size", "must be a positive integer")
        require(self.image_dtype in IMAGE_DTYPES, f"{where}.image_dtype",
                f"{self.image_dtype!r} is not allowed; allowed values: {', '.join(IMAGE_DTYPES)}")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """LoRA on the flow model: rank and alpha (scale = alpha / rank)."""

    rank: int = 8
    alpha: float = 8.0

    def check(self, where: str) -> None:
        require(self.rank >= 1, f"{where}.rank", "must be a positive integer")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Typed view of one resolved run config (the file written by the workflow)."""

    suite: str
    reward: str
    rewards: tuple[str, ...]
    seed: int
    method: dict
    train: TrainConfig
    sampler: SamplerConfig
    eval: EvalConfig
    lora: LoraSettings
    resources: dict
    raw: dict
    model: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping, source: str = "run config") -> RunConfig:
        data = dict(data)
        required = ("suite", "reward", "rewards", "seed", "method", "train", "sampler", "eval",
                    "lora", "resources")
        missing = [key for key in required if key not in data]
        if missing:
            raise ConfigError(f"{source}: missing key(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(required) - {"model"})
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown)}; allowed keys: "
                f"{', '.join(sorted(required))}"
            )
        if data["reward"] not in data["rewards"]:
            raise ConfigError(f"{source}: reward {data['reward']!r} is not in rewards")
        return cls(
            suite=data["suite"],
            reward=data["reward"],
            rewards=tuple(data["rewards"]),
            seed=int(data["seed"]),
            method=dict(data["method"]),
            train=from_dict(TrainConfig, data["train"], f"{source}: train"),
            sampler=from_dict(SamplerConfig, data["sampler"], f"{source}: sampler"),
            eval=from_dict(EvalConfig, data["eval"], f"{source}: eval"),
            lora=from_dict(LoraSettings, data["lora"], f"{source}: lora"),
            resources=dict(data["resources"]),
            raw=data,
            model=dict(data.get("model") or {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunConfig:
        return cls.from_mapping(load_yaml(path), source=str(path))


@dataclasses.dataclass(frozen=True)
class BaseSampleConfig:
    """Typed view of the config of the base model's evaluation samples (one per reward)."""

    suite: str
    reward: str
    rewards: tuple[str, ...]
    sampler: SamplerConfig
    eval: EvalConfig
    resources: dict
    model: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseSampleConfig:
        data = load_yaml(path)
        source = str(path)
        return cls(
            suite=data["suite"],
            reward=data["reward"],
            rewards=tuple(data["rewards"]),
            sampler=from_dict(SamplerConfig, data["sampler"], f"{source}: sampler"),
            eval=from_dict(EvalConfig, data["eval"], f"{source}: eval"),
            resources=dict(data["resources"]),
            model=dict(data.get("model") or {}),
        )


def method_file_schema(method_schemas: Mapping, method: str) -> dict:
    """The JSON schema of config/methods/<method>.yaml, from workflow/schemas/method.schema.yaml.

    A method's keys are the shared optimizer keys plus its own block; the same keys may appear
    under ``per_suite.<suite>`` and ``per_reward.<reward>``.
    """
    blocks = method_schemas["methods"]
    if method not in blocks:
        raise ConfigError(
            f"method {method!r} has no block in the method schema; known methods: "
            f"{', '.join(sorted(blocks))}"
        )
    properties = {**method_schemas["$defs"]["optimizer"], **blocks[method]}
    body = {"type": "object", "additionalProperties": False, "properties": properties}
    overrides = {"type": "object", "additionalProperties": body}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {**properties, "per_suite": overrides, "per_reward": overrides},
    }
