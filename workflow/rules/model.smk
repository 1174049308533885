rule train:
    input:
        data=P["prepared"],
        teacher=str(paths.teacher_path(ARCH)),
    output:
        model=P["checkpoint"],
        log=P["train_log"],
    log:
        "logs/train/{name}/{variant}/seed{seed}/{cls}.log",
    benchmark:
        "logs/benchmarks/train/{name}/{variant}/seed{seed}/{cls}.tsv"
    conda:
        "../envs/skrd4ad.yaml"
    threads: 2
    resources:
        gpu=train_gpus,
    params:
        code=job_code("train"),
        config=train_config,
    message:
        "Training {wildcards.variant} on {wildcards.name}/{wildcards.cls} (seed {wildcards.seed})"
    script:
        "../scripts/train.py"


rule evaluate:
    input:
        model=P["checkpoint"],
        data=P["prepared"],
    output:
        **{f.replace(".", "_"): f"{P['eval']}/{f}" for f in paths.EVAL_FILES},
        figures=directory(f"{P['eval']}/figures"),
    log:
        "logs/evaluate/{name}/{variant}/seed{seed}/{cls}.log",
    benchmark:
        "logs/benchmarks/evaluate/{name}/{variant}/seed{seed}/{cls}.tsv"
    conda:
        "../envs/skrd4ad.yaml"
    threads: 2
    resources:
        gpu=eval_gpus,
    params:
        code=job_code("evaluate"),
        config=config["evaluate"],
    message:
        "Evaluating {wildcards.variant} on {wildcards.name}/{wildcards.cls} (seed {wildcards.seed})"
    script:
        "../scripts/evaluate.py"
