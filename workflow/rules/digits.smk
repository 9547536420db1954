# The digits suite's data and networks: split, pretrained flow model, reward and evaluation nets.


rule prepare_digits:
    output:
        RESOURCES["data"],
    log:
        "logs/digits/prepare_digits.log",
    benchmark:
        "benchmarks/digits/prepare_digits.tsv"
    conda:
        "../envs/vggflow.yaml"
    params:
        holdout=DIGITS["holdout_fraction"],
        seed=DIGITS["split_seed"],
    shell:
        "python -m vggflow prepare-digits --out {output} --holdout-fraction {params.holdout}"
        " --seed {params.seed} > {log} 2>&1"


rule pretrain_digits:
    input:
        RESOURCES["data"],
    output:
        RESOURCES["base_model"],
    log:
        "logs/digits/pretrain_digits.log",
    benchmark:
        "benchmarks/digits/pretrain_digits.tsv"
    # The runs wait for all four networks: longest first (pretraining about 47 s on the 2-core
    # machine, each reward net 30 s, the evaluation net 9 s), so that two cores finish together.
    priority: 2
    conda:
        "../envs/vggflow.yaml"
    threads: 1
    params:
        p=DIGITS["pretrain"],
        vggflow=VGGFLOW,
    shell:
        "{params.vggflow} pretrain-digits --data {input} --out {output} --threads {threads}"
        " --steps {params.p[steps]} --batch-size {params.p[batch_size]} --lr {params.p[lr]}"
        " --hidden {params.p[hidden]} --depth {params.p[depth]}"
        " --label-dropout {params.p[label_dropout]} --ema-decay {params.p[ema_decay]}"
        " --seed {params.p[seed]} > {log} 2>&1"


rule train_digits_reward:
    input:
        RESOURCES["data"],
    output:
        "resources/digits/rewards/{reward}.pt",
    log:
        "logs/digits/train_digits_reward/{reward}.log",
    benchmark:
        "benchmarks/digits/train_digits_reward/{reward}.tsv"
    priority: 1
    conda:
        "../envs/vggflow.yaml"
    threads: 1
    params:
        steps=DIGITS["reward_steps"],
        vggflow=VGGFLOW,
        seed=DIGITS["reward_seed"],
    shell:
        "{params.vggflow} train-digits-reward --name {wildcards.reward} --data {input}"
        " --out {output} --steps {params.steps} --seed {params.seed} --threads {threads}"
        " > {log} 2>&1"


rule train_digits_eval_net:
    input:
        RESOURCES["data"],
    output:
        RESOURCES["eval_net"],
    log:
        "logs/digits/train_digits_eval_net.log",
    benchmark:
        "benchmarks/digits/train_digits_eval_net.tsv"
    conda:
        "../envs/vggflow.yaml"
    threads: 1
    params:
        steps=DIGITS["eval_net_steps"],
        vggflow=VGGFLOW,
        seed=DIGITS["eval_net_seed"],
    shell:
        "{params.vggflow} train-digits-evalnet --data {input} --out {output}"
        " --steps {params.steps} --seed {params.seed} --threads {threads} > {log} 2>&1"
