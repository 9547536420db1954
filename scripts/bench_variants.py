"""Resolved run configs for the GPU benchmark's variants, without Snakemake (the GPU machine may
have no Snakemake): ``config/bench_sd3.yaml`` (schema defaults filled in, as the workflow does),
one overlay per variant, resolved for the config's first reward and seed 0.

    python scripts/bench_variants.py --out-dir /tmp/configs vggflow vggflow_packed adjoint_matching

Variants: ``<method>`` (the bench config as it is), then any of the suffixes ``_packed``
(``model.attention: packed``, the default), ``_diffusers_attention`` (diffusers' joint-attention
processor), ``_compiled`` (``model.compile: blocks``), ``_1024`` (1024 px, micro-batch 4),
``_batch8`` (effective batch 8 instead of 32: an update of a quarter of the samples, for a
measurement that must fit a short device call), ``_value_heads64`` (VGG-Flow's value U-Net with
attention heads of 64 channels, the same parameters),
``_no_tf32`` (``train.tf32`` off), ``_adjoint_kept`` (``model.checkpoint_adjoint`` off: the
adjoint ODE's activations kept, not recomputed), ``_forward_fd`` (VGG-Flow's ``fd_scheme:
forward``), e.g. ``vggflow_packed_compiled``. Writes
``<variant>.yaml`` per variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vggflow.config import (
    ConfigError,
    deep_merge,
    fill_defaults,
    load_yaml,
    method_file_schema,
    resolve_run_config,
    validate,
    write_yaml_atomic,
)

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = {
    "packed": {"model": {"attention": "packed"}},
    "diffusers_attention": {"model": {"attention": "diffusers"}},
    "compiled": {"model": {"compile": "blocks"}},
    "1024": {"model": {"resolution": 1024}, "train": {"micro_batch_size": 4}},
    "batch8": {"train": {"effective_batch_size": 8}},  # a quarter of the paper's update
    # the value U-Net's attention in heads of 64 channels (SD3 medium's block widths 64-256)
    "value_heads64": {"model": {"value_unet": {"attention_head_dim": [1, 2, 4, 4]}}},
    "no_tf32": {"train": {"tf32": False}},
    "adjoint_kept": {"model": {"checkpoint_adjoint": False}},
    "forward_fd": {"method": {"fd_scheme": "forward"}},  # the method's settings, not the config's
}


def resolve_variant(config: dict, variant: str) -> dict:
    """The run config of ``<method>`` with the overlays its suffixes name (``_<overlay>``, any
    number, e.g. ``vggflow_packed_compiled``) for the config's first reward. A method setting
    that the method does not have (``adjoint_matching_forward_fd``) is refused here, by the
    method schema, rather than when the benchmark builds the method."""
    method, overlay = variant, {}
    while suffix := next((s for s in OVERLAYS if method.endswith(f"_{s}")), None):
        method = method.removesuffix(f"_{suffix}")
        overlay = deep_merge(overlay, OVERLAYS[suffix])
    method_file = REPO / "config" / "methods" / f"{method}.yaml"
    if not method_file.is_file():
        raise SystemExit(f"unknown variant {variant!r}: no method file {method_file}; variants "
                         f"are <method> followed by any of _{', _'.join(OVERLAYS)}")
    method_settings = overlay.pop("method", {})
    method_config = load_yaml(method_file)
    method_schemas = load_yaml(REPO / "workflow" / "schemas" / "method.schema.yaml")
    try:
        validate({**method_config, **method_settings}, method_file_schema(method_schemas, method),
                 f"variant {variant!r} ({method_file.name} with the suffixes' method settings)")
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    return resolve_run_config(deep_merge(config, overlay), method_config,
                              config["rewards"][0], method, 0, overrides=method_settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--config", default=str(REPO / "config" / "bench_sd3.yaml"))
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    schema = load_yaml(REPO / "workflow" / "schemas" / "config.schema.yaml")
    raw = load_yaml(args.config)
    validate(raw, schema, args.config)
    config = fill_defaults(raw, schema)
    resolved = {variant: resolve_variant(config, variant) for variant in args.variants}
    for variant, run_config in resolved.items():  # all resolved first: none written if one fails
        path = Path(args.out_dir) / f"{variant}.yaml"
        write_yaml_atomic(run_config, path)
        print(f"{variant} -> {path}")


if __name__ == "__main__":
    main()
