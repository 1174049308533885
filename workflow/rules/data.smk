rule download:
    output:
        directory("data/raw/{dataset}"),
    log:
        "logs/download/{dataset}.log",
    benchmark:
        "logs/benchmarks/download/{dataset}.tsv"
    message:
        "Fetching dataset {wildcards.dataset} into MVTec layout"
    params:
        data=download_params,
    conda:
        "../envs/skrd4ad.yaml"
    script:
        "../scripts/download.py"


rule fetch_teacher:
    output:
        "data/teacher/{arch}.pth",
    log:
        "logs/teacher/{arch}.log",
    message:
        "Fetching {wildcards.arch} teacher weights ({params.source})"
    params:
        source=TEACHER_SOURCE,
    conda:
        "../envs/skrd4ad.yaml"
    script:
        "../scripts/fetch_teacher.py"


rule prepare:
    input:
        raw="data/raw/{dataset}",
    output:
        directory("data/prepared/{dataset}/{cls}"),
    log:
        "logs/prepare/{dataset}/{cls}.log",
    benchmark:
        "logs/benchmarks/prepare/{dataset}/{cls}.tsv"
    message:
        "Preparing {wildcards.dataset}/{wildcards.cls}"
    params:
        image_size=config["prepare"]["image_size"],
        image_level_only=config["data"]["image_level_only"],
    conda:
        "../envs/skrd4ad.yaml"
    script:
        "../scripts/prepare.py"
