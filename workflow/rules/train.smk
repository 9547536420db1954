# One resolved config per run, then one job per run that trains it, samples its checkpoints and
# scores the samples (every reward, diversity and Fréchet distances against the base model's).


localrules:
    resolve_run_config,
    resolve_base_config,


rule resolve_run_config:
    output:
        "results/runs/{reward}/{method}/seed{seed}/config.yaml",
    log:
        "logs/resolve_run_config/{reward}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/resolve_run_config/{reward}/{method}/seed{seed}.tsv"
    conda:
        "../envs/vggflow.yaml"
    params:
        config=run_config_yaml,
    shell:
        "printf '%s' {params.config:q} > {output} 2> {log}"


rule resolve_base_config:
    output:
        "results/base/{reward}/config.yaml",
    log:
        "logs/resolve_base_config/{reward}.log",
    benchmark:
        "benchmarks/resolve_base_config/{reward}.tsv"
    conda:
        "../envs/vggflow.yaml"
    params:
        config=base_config_yaml,
    shell:
        "printf '%s' {params.config:q} > {output} 2> {log}"


rule train:
    input:
        cfg="results/runs/{reward}/{method}/seed{seed}/config.yaml",
        base="results/base/{reward}/samples.pt",
        resources=suite_files,
    output:
        lora=directory("results/runs/{reward}/{method}/seed{seed}/lora"),
        log_csv="results/runs/{reward}/{method}/seed{seed}/train_log.csv",
        samples="results/runs/{reward}/{method}/seed{seed}/samples.pt",
        provenance="results/runs/{reward}/{method}/seed{seed}/provenance.json",
        metrics="results/metrics/{reward}/{method}/seed{seed}.csv",
    log:
        "logs/train/{reward}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{reward}/{method}/seed{seed}.tsv"
    conda:
        "../envs/vggflow.yaml"
    threads: 1
    resources:
        gpu=CONFIG["gpus_per_run"],
        # a retry (attempt 2+) of a job that had finished publishes its kept outputs again
        attempt=lambda wildcards, attempt: attempt,
    params:
        # Resumable state: NOT an output, so it survives a failed or killed attempt.
        state="results/runs/{reward}/{method}/seed{seed}/state",
        divergence=divergence_flag,
        launcher=train_launcher,
    shell:
        "{params.launcher} train --config {input.cfg} --state-dir {params.state}"
        " --lora-dir {output.lora} --log-csv {output.log_csv} --samples {output.samples}"
        " --provenance {output.provenance} --base-samples {input.base}"
        " --metrics {output.metrics} --threads {threads} {params.divergence}"
        " --attempt {resources.attempt} > {log} 2>&1"


rule sample_base:
    input:
        cfg="results/base/{reward}/config.yaml",
        resources=suite_files,
    output:
        "results/base/{reward}/samples.pt",
    log:
        "logs/sample_base/{reward}.log",
    benchmark:
        "benchmarks/sample_base/{reward}.tsv"
    conda:
        "../envs/vggflow.yaml"
    threads: 1
    params:
        vggflow=VGGFLOW,
    shell:
        "{params.vggflow} sample-base --config {input.cfg} --out {output} --threads {threads}"
        " > {log} 2>&1"
