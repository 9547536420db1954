# Collect every run's metrics, then the summary table and the convergence figures.


rule collect_metrics:
    input:
        metric_targets(),
    output:
        "results/metrics/all.csv",
    log:
        "logs/collect_metrics.log",
    benchmark:
        "benchmarks/collect_metrics.tsv"
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/collect_metrics.py"


rule make_tables:
    input:
        "results/metrics/all.csv",
    output:
        csv=report(
            "results/tables/summary.csv",
            category="Tables",
            caption="../report/table.rst",
        ),
        markdown="results/tables/summary.md",
    log:
        "logs/make_tables.log",
    benchmark:
        "benchmarks/make_tables.tsv"
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/make_tables.py"


rule plot_convergence:
    input:
        "results/metrics/all.csv",
    output:
        png=report(
            "results/figures/convergence_{reward}.png",
            category="Convergence",
            subcategory="{reward}",
            caption="../report/convergence.rst",
            labels={"reward": "{reward}", "figure": "convergence"},
        ),
        pdf="results/figures/convergence_{reward}.pdf",
    log:
        "logs/plot_convergence/{reward}.log",
    benchmark:
        "benchmarks/plot_convergence/{reward}.tsv"
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/plot_convergence.py"


rule collect_ablation_metrics:
    input:
        ablation_metric_targets(),
    output:
        "results/ablations/metrics.csv",
    log:
        "logs/collect_ablation_metrics.log",
    benchmark:
        "benchmarks/collect_ablation_metrics.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        variants=variant_names(ABLATION_RUNS),
    script:
        "../scripts/collect_variant_metrics.py"


rule plot_tradeoff:
    input:
        "results/ablations/metrics.csv",
    output:
        png=report(
            "results/figures/tradeoff.png",
            category="Ablations",
            caption="../report/tradeoff.rst",
        ),
        pdf="results/figures/tradeoff.pdf",
    log:
        "logs/plot_tradeoff.log",
    benchmark:
        "benchmarks/plot_tradeoff.tsv"
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/plot_tradeoff.py"


rule make_compute_table:
    input:
        train_targets(),
    output:
        csv=report(
            "results/bench/methods.csv",
            category="Compute",
            caption="../report/compute.rst",
        ),
        markdown="results/bench/methods.md",
    log:
        "logs/make_compute_table.log",
    benchmark:
        "benchmarks/make_compute_table.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        runs=RUNS,
    script:
        "../scripts/make_compute_table.py"
