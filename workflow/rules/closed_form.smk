# The toy2d closed-form check: VGG-Flow and VGG-Flow-PMP against the exact optimal control
# (notes Part D); independent of the experiment config. 1500 updates each (the tests use fewer).


rule closed_form_check:
    output:
        json="results/closed_form/check.json",
        png=report(
            "results/closed_form/check.png",
            category="Closed form",
            caption="../report/closed_form.rst",
        ),
    log:
        "logs/closed_form_check.log",
    benchmark:
        "benchmarks/closed_form_check.tsv"
    conda:
        "../envs/vggflow.yaml"
    threads: 1
    params:
        updates=1500,
    shell:
        "python -m vggflow closed-form --updates {params.updates} --out {output.json}"
        " --figure {output.png} --threads {threads} > {log} 2>&1"
