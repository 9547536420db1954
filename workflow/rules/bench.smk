# Cost of one optimizer update of every method, side by side (target `bench`; not part of `all`).


rule bench_updates:
    input:
        configs=bench_configs(),
        resources=suite_files,
    output:
        table="results/bench/update_cost_{suite}.csv",
        regions="results/bench/update_regions_{suite}.csv",
        figure=report(
            "results/bench/update_cost_{suite}.png",
            caption="../report/update_cost.rst",
            category="Compute",
        ),
    log:
        "logs/bench_updates/{suite}.log",
    benchmark:
        "benchmarks/bench_updates/{suite}.tsv"
    conda:
        "../envs/vggflow.yaml"
    threads: 1  # as the train rule
    params:
        updates=BENCH["updates"],
        warmup=BENCH["warmup"],
    shell:
        "python -m vggflow bench --configs {input.configs} --updates {params.updates}"
        " --warmup {params.warmup} --threads {threads} --out {output.table}"
        " --regions-out {output.regions}"
        " --figure {output.figure} > {log} 2>&1"
