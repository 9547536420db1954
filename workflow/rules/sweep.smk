# Fair tuning: every grid point of `sweep` in the config, per reward and seed, then the winners.


rule collect_sweep_metrics:
    input:
        sweep_metric_targets(),
    output:
        "results/sweep/metrics.csv",
    log:
        "logs/collect_sweep_metrics.log",
    benchmark:
        "benchmarks/collect_sweep_metrics.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        variants=variant_names(SWEEP_RUNS),
    script:
        "../scripts/collect_variant_metrics.py"


rule select_sweep_winners:
    input:
        "results/sweep/metrics.csv",
    output:
        settings=report(
            "results/sweep/settings.csv",
            category="Sweep",
            caption="../report/sweep_settings.rst",
        ),
        markdown="results/sweep/winners.md",
        overrides="results/sweep/winners.yaml",
    log:
        "logs/select_sweep_winners.log",
    benchmark:
        "benchmarks/select_sweep_winners.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        limits=sweep_limits(),
    script:
        "../scripts/select_sweep_winners.py"


rule plot_sweep:
    input:
        "results/sweep/settings.csv",
    output:
        png=report(
            "results/figures/sweep.png",
            category="Sweep",
            caption="../report/sweep.rst",
        ),
        pdf="results/figures/sweep.pdf",
    log:
        "logs/plot_sweep.log",
    benchmark:
        "benchmarks/plot_sweep.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        min_diversity_ratio=SWEEP["min_diversity_ratio"] if SWEEP else None,
    script:
        "../scripts/plot_sweep.py"
