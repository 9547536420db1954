# The one download rule: the SD3 suite's weights and prompt files (sources: vggflow/fetch.py).
# Local rules: they run where Snakemake runs (the login node, with internet), never in a job.
# Training does not depend on the manifest (a refetch must not rerun training); the SD3 jobs
# check that their files are present and name this rule when they are not.


localrules:
    resolve_sd3_resources,
    fetch_sd3_resources,


rule resolve_sd3_resources:
    output:
        "resources/sd3/resources.yaml",
    log:
        "logs/fetch/resolve_sd3_resources.log",
    benchmark:
        "benchmarks/fetch/resolve_sd3_resources.tsv"
    conda:
        "../envs/vggflow.yaml"
    params:
        config=RESOURCES_YAML,
    shell:
        "printf '%s' {params.config:q} > {output} 2> {log}"


rule fetch_sd3_resources:
    input:
        "resources/sd3/resources.yaml",
    output:
        "resources/sd3/manifest.json",
    log:
        "logs/fetch/fetch_sd3_resources.log",
    benchmark:
        "benchmarks/fetch/fetch_sd3_resources.tsv"
    conda:
        "../envs/vggflow.yaml"
    shell:
        "python -m vggflow fetch-sd3 --config {input} --manifest {output} > {log} 2>&1"
