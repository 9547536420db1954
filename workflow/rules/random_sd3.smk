# SD3 files with random weights, written locally (nothing is downloaded): the tiny-sd3 suite's
# (SD3's classes with tiny configs, the three rewards' tiny versions, a prompt file; CPU tests),
# or SD3-medium-shaped ones for GPU benchmarks (resources.sd3.random_weights: medium).


rule make_random_sd3:
    output:
        RANDOM_SD3_MANIFEST,
    log:
        "logs/random_sd3/make_random_sd3.log",
    benchmark:
        "benchmarks/random_sd3/make_random_sd3.tsv"
    conda:
        "../envs/vggflow.yaml"
    params:
        out_dir=RANDOM_SD3_DIR,
        shape=RANDOM_SD3_SHAPE,
        rewards=random_sd3_rewards_option(),
    shell:
        "python -m vggflow make-random-sd3 --out-dir {params.out_dir} --shape {params.shape}"
        " {params.rewards} > {log} 2>&1"
