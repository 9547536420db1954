# Every reward, diversity and Fréchet distances of one run's evaluation samples.


rule metrics:
    input:
        cfg="results/runs/{reward}/{method}/seed{seed}/config.yaml",
        samples="results/runs/{reward}/{method}/seed{seed}/samples.pt",
        base="results/base/{reward}/samples.pt",
        resources=suite_files,
    output:
        "results/metrics/{reward}/{method}/seed{seed}.csv",
    log:
        "logs/metrics/{reward}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/metrics/{reward}/{method}/seed{seed}.tsv"
    conda:
        "../envs/vggflow.yaml"
    threads: 1
    shell:
        "python -m vggflow metrics --config {input.cfg} --samples {input.samples}"
        " --base-samples {input.base} --out {output} --threads {threads} > {log} 2>&1"
