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
        logs=train_targets(),
        provenance=train_targets("provenance.json"),
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
        benchmarks=train_benchmarks(),
    script:
        "../scripts/make_compute_table.py"


rule make_reward_cost_table:
    input:
        metrics="results/metrics/all.csv",
        times="results/metrics/times.csv",
    output:
        csv=report(
            "results/bench/reward_cost.csv",
            category="Compute",
            caption="../report/reward_cost.rst",
        ),
        markdown="results/bench/reward_cost.md",
    log:
        "logs/make_reward_cost_table.log",
    benchmark:
        "benchmarks/make_reward_cost_table.tsv"
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/make_reward_cost_table.py"


rule collect_times:
    input:
        train_targets(),
    output:
        "results/metrics/times.csv",
    log:
        "logs/collect_times.log",
    benchmark:
        "benchmarks/collect_times.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        runs=RUNS,
    script:
        "../scripts/collect_times.py"


rule select_checkpoints:
    input:
        "results/metrics/all.csv",
    output:
        report(
            "results/tables/selected_checkpoints.csv",
            category="Tables",
            caption="../report/selection.rst",
        ),
    log:
        "logs/select_checkpoints.log",
    benchmark:
        "benchmarks/select_checkpoints.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        min_diversity_ratio=SELECTION["min_diversity_ratio"],
        max_fd_prior=SELECTION["max_fd_prior"],
    script:
        "../scripts/select_checkpoints.py"


rule make_paper_tables:
    input:
        metrics="results/metrics/all.csv",
        times="results/metrics/times.csv",
    output:
        csv=report(
            "results/tables/table1_{budget}.csv",
            category="Tables",
            subcategory="Table 1",
            caption="../report/table1.rst",
            labels={"budget": "{budget}", "table": "Table 1 layout"},
        ),
        markdown="results/tables/table1_{budget}.md",
        latex="results/tables/table1_{budget}.tex",
    log:
        "logs/make_paper_tables/{budget}.log",
    benchmark:
        "benchmarks/make_paper_tables/{budget}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        reference=SUITE == "sd3",
    script:
        "../scripts/make_paper_tables.py"


rule plot_wallclock:
    input:
        metrics="results/metrics/all.csv",
        times="results/metrics/times.csv",
    output:
        png=report(
            "results/figures/wallclock_{reward}.png",
            category="Convergence",
            subcategory="{reward}",
            caption="../report/wallclock.rst",
            labels={"reward": "{reward}", "figure": "wall-clock convergence"},
        ),
        pdf="results/figures/wallclock_{reward}.pdf",
    log:
        "logs/plot_wallclock/{reward}.log",
    benchmark:
        "benchmarks/plot_wallclock/{reward}.tsv"
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/plot_wallclock.py"


rule plot_pareto:
    input:
        "results/metrics/all.csv",
    output:
        png=report(
            "results/figures/pareto_{reward}.png",
            category="Trade-offs",
            subcategory="{reward}",
            caption="../report/pareto.rst",
            labels={"reward": "{reward}", "figure": "Pareto"},
        ),
        pdf="results/figures/pareto_{reward}.pdf",
    log:
        "logs/plot_pareto/{reward}.log",
    benchmark:
        "benchmarks/plot_pareto/{reward}.tsv"
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/plot_pareto.py"


rule plot_sample_evolution:
    input:
        grid_samples,
    output:
        report(
            directory("results/figures/evolution_{reward}"),
            patterns=["{method}.png"],
            category="Samples",
            subcategory="{reward}",
            caption="../report/evolution.rst",
            labels={"reward": "{reward}", "method": "{method}", "figure": "evolution"},
        ),
    log:
        "logs/plot_sample_evolution/{reward}.log",
    benchmark:
        "benchmarks/plot_sample_evolution/{reward}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        methods=CONFIG["methods"],
    script:
        "../scripts/plot_sample_evolution.py"


rule plot_method_grid:
    input:
        samples=grid_samples,
        selected="results/tables/selected_checkpoints.csv",
        metrics="results/metrics/all.csv",
    output:
        png=report(
            "results/figures/grid_{reward}.png",
            category="Samples",
            subcategory="{reward}",
            caption="../report/grid.rst",
            labels={"reward": "{reward}", "method": "all", "figure": "grid"},
        ),
        pdf="results/figures/grid_{reward}.pdf",
    log:
        "logs/plot_method_grid/{reward}.log",
    benchmark:
        "benchmarks/plot_method_grid/{reward}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        methods=CONFIG["methods"],
        seed=FIRST_SEED,
    script:
        "../scripts/plot_method_grid.py"
