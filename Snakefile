# VGG-Flow benchmark: finetune flow models to rewards with VGG-Flow and baselines, evaluate, report.
# Table of contents only; rules live in workflow/rules, helpers in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


# The default benchmark's config, unless --configfile names others (each config is complete).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


if SUITE == "digits":

    include: "workflow/rules/digits.smk"


if SUITE == "sd3":

    include: "workflow/rules/fetch.smk"


if RANDOM_SD3_SHAPE:

    include: "workflow/rules/random_sd3.smk"


include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/closed_form.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/bench.smk"


rule all:
    default_target: True
    input:
        table_targets(),
        figure_targets(),


rule train_all:
    input:
        train_targets(),


rule closed_form:
    input:
        "results/closed_form/check.png",


rule ablations:
    input:
        "results/figures/tradeoff.png",


rule sweep:
    input:
        sweep_targets,


rule bench:
    input:
        f"results/bench/update_cost_{SUITE}.csv",
        f"results/bench/update_regions_{SUITE}.csv",


rule figures:
    input:
        table_targets(),
        figure_targets(),
