rule download:
    input:
        source_files,
    output:
        directory(P["raw"]),
    log:
        "logs/download/{name}.log",
    benchmark:
        "logs/benchmarks/download/{name}.tsv"
    message:
        "Fetching dataset {wildcards.name} into MVTec layout"
    params:
        data=download_params,
    conda:
        "../envs/skrd4ad.yaml"
    script:
        "../scripts/download.py"


rule fetch_teacher:
    output:
        P["teacher"],
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
        raw=P["raw"],
    output:
        directory(P["prepared"]),
    log:
        "logs/prepare/{name}/{cls}.log",
    benchmark:
        "logs/benchmarks/prepare/{name}/{cls}.tsv"
    message:
        "Preparing {wildcards.name}/{wildcards.cls}"
    params:
        image_size=config["prepare"]["image_size"],
        image_level_only=config["data"]["image_level_only"],
        allow_empty_masks=config["prepare"]["allow_empty_masks"],
    conda:
        "../envs/skrd4ad.yaml"
    script:
        "../scripts/prepare.py"
