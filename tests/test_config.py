import pytest
import yaml
from conftest import REPO

from vggflow.config import (
    ConfigError,
    RunConfig,
    TrainConfig,
    check_names,
    deep_merge,
    fill_defaults,
    from_dict,
    load_yaml,
    method_file_schema,
    method_settings,
    resolve_run_config,
    validate,
)

SCHEMA = load_yaml(REPO / "workflow/schemas/config.schema.yaml")
METHOD_SCHEMAS = load_yaml(REPO / "workflow/schemas/method.schema.yaml")


def default_config():
    return fill_defaults(load_yaml(REPO / "config/config.yaml"), SCHEMA)


def test_shipped_config_and_method_files_validate():
    validate(load_yaml(REPO / "config/config.yaml"), SCHEMA, "config.yaml")
    for path in (REPO / "config/methods").glob("*.yaml"):
        validate(load_yaml(path), method_file_schema(METHOD_SCHEMAS, path.stem), str(path))


def test_deep_merge_nested_and_copy():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    merged = deep_merge(base, {"a": {"c": 3}, "d": [2]})
    assert merged == {"a": {"b": 1, "c": 3}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}


def test_method_settings_merge_order():
    method_file = {"lr": 1.0, "beta": 1.0, "per_suite": {"digits": {"lr": 2.0, "beta": 2.0}},
                   "per_reward": {"margin": {"beta": 3.0}}}
    assert method_settings(method_file, "digits", "margin") == {"lr": 2.0, "beta": 3.0}
    assert method_settings(method_file, "digits", "thickness") == {"lr": 2.0, "beta": 2.0}
    assert method_settings(method_file, "sd3", "aesthetic") == {"lr": 1.0, "beta": 1.0}


def test_resolved_run_config_is_readable_by_the_package():
    config = default_config()
    method_file = load_yaml(REPO / "config/methods/vggflow.yaml")
    resolved = resolve_run_config(config, method_file, "margin", "vggflow", 2)
    cfg = RunConfig.from_mapping(resolved)
    assert cfg.seed == 2 and cfg.method["name"] == "vggflow"
    assert cfg.method["beta"] == method_file["per_reward"]["margin"]["beta"]
    assert cfg.method["lr"] == method_file["per_reward"]["margin"]["lr"]
    assert cfg.method["alpha"] == method_file["per_suite"]["digits"]["alpha"]
    assert cfg.train.accumulation_steps == 1


def test_the_order_of_a_method_files_keys_does_not_change_the_resolved_config():
    config = default_config()
    method_file = load_yaml(REPO / "config/methods/vggflow.yaml")
    reordered = dict(reversed(list(method_file.items())))
    runs = [yaml.dump(resolve_run_config(config, file, "margin", "vggflow", 0, {"lr": 0.5}),
                      sort_keys=False) for file in (method_file, reordered)]
    assert runs[0] == runs[1]
    assert "  lr: 0.5\n" in runs[0]  # overrides come last


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"train": {"max_step": 10}}, "unknown key(s) 'max_step' in train; allowed keys:"),
        ({"train": {"max_steps": 0}}, "train.max_steps: 0 is less than the minimum of 1"),
        ({"suite": "mnist"}, "suite: 'mnist' is not allowed; allowed values: digits"),
        ({"seedz": [0]}, "unknown key(s) 'seedz' in <top level>"),
    ],
)
def test_validation_names_the_key(patch, expected):
    config = deep_merge(load_yaml(REPO / "config/config.yaml"), patch)
    with pytest.raises(ConfigError) as info:
        validate(config, SCHEMA, "config.yaml")
    assert expected in str(info.value)


def test_method_file_schema_rejects_misspelled_override():
    schema = method_file_schema(METHOD_SCHEMAS, "vggflow")
    with pytest.raises(ConfigError, match="unknown key.*'betta' in per_reward.margin"):
        validate({"per_reward": {"margin": {"betta": 1.0}}}, schema, "vggflow.yaml")
    with pytest.raises(ConfigError, match="known methods: .*vggflow"):
        method_file_schema(METHOD_SCHEMAS, "nope")


def test_check_names_lists_available():
    expected = "unknown method.*'vgflow'.*available methods: refl, vggflow"
    with pytest.raises(ConfigError, match=expected):
        check_names("method", ["vgflow"], ["vggflow", "refl"], "methods")


def test_dataclass_views_reject_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="allowed keys: .*max_steps"):
        from_dict(TrainConfig, {"max_stepz": 3}, "train")
    with pytest.raises(ConfigError, match="train.max_steps: must be a positive integer"):
        from_dict(TrainConfig, {"max_steps": -1}, "train")
    with pytest.raises(ConfigError, match="does not divide"):
        from_dict(TrainConfig, {"effective_batch_size": 32, "micro_batch_size": 5}, "train")


def test_eval_steps_include_start_and_end():
    assert TrainConfig(max_steps=10, eval_every=4).eval_steps() == [0, 4, 8, 10]
    assert TrainConfig(max_steps=8, eval_every=4).eval_steps() == [0, 4, 8]
