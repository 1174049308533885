rule train:
    input:
        data="data/prepared/{dataset}/{cls}",
        teacher=f"data/teacher/{ARCH}.pth",
    output:
        model="results/{dataset}/checkpoints/{variant}/seed{seed}/{cls}.pt",
        log="results/{dataset}/train/{variant}/seed{seed}/{cls}.tsv",
    log:
        "logs/train/{dataset}/{variant}/seed{seed}/{cls}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{variant}/seed{seed}/{cls}.tsv"
    message:
        "Training {wildcards.variant} on {wildcards.dataset}/{wildcards.cls} (seed {wildcards.seed})"
    params:
        config=train_config,
    threads: 2
    resources:
        gpu=train_gpus,
    conda:
        "../envs/skrd4ad.yaml"
    script:
        "../scripts/train.py"


rule evaluate:
    input:
        model="results/{dataset}/checkpoints/{variant}/seed{seed}/{cls}.pt",
        data="data/prepared/{dataset}/{cls}",
    output:
        **{name.replace(".", "_"): f"results/{{dataset}}/eval/{{variant}}/seed{{seed}}/{{cls}}/{name}"
           for name in pipeline.EVAL_FILES},
        figures=directory("results/{dataset}/eval/{variant}/seed{seed}/{cls}/figures"),
    log:
        "logs/evaluate/{dataset}/{variant}/seed{seed}/{cls}.log",
    benchmark:
        "logs/benchmarks/evaluate/{dataset}/{variant}/seed{seed}/{cls}.tsv"
    message:
        "Evaluating {wildcards.variant} on {wildcards.dataset}/{wildcards.cls} (seed {wildcards.seed})"
    params:
        config=config["evaluate"],
    threads: 2
    resources:
        gpu=eval_gpus,
    conda:
        "../envs/skrd4ad.yaml"
    script:
        "../scripts/evaluate.py"
