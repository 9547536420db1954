# The tiny-sd3 suite's files: SD3's classes with tiny random weights, the three rewards' tiny
# versions and a prompt file, written locally (CPU tests; nothing is downloaded).


rule make_tiny_sd3:
    output:
        TINY_SD3_MANIFEST,
    log:
        "logs/tiny_sd3/make_tiny_sd3.log",
    benchmark:
        "benchmarks/tiny_sd3/make_tiny_sd3.tsv"
    conda:
        "../envs/vggflow.yaml"
    params:
        out_dir=TINY_SD3_DIR,
    shell:
        "python -m vggflow make-tiny-sd3 --out-dir {params.out_dir} > {log} 2>&1"
