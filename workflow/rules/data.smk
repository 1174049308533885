rule download:
    input:
        source_files,
    output:
        directory(P["raw"]),
    log:
        "logs/download/{name}.log",
    benchmark:
        "logs/benchmarks/download/{name}.tsv"
    conda:
        "../envs/skrd4ad.yaml"
    params:
        code=job_code("download"),
        data=download_params,
    message:
        "Fetching dataset {wildcards.name} into MVTec layout"
    script:
        "../scripts/download.py"


rule fetch_teacher:
    output:
        P["teacher"],
    log:
        "logs/teacher/{arch}.log",
    conda:
        "../envs/skrd4ad.yaml"
    params:
        code=job_code("fetch_teacher"),
        source=TEACHER_SOURCE,
    message:
        "Fetching {wildcards.arch} teacher weights ({params.source})"
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
    conda:
        "../envs/skrd4ad.yaml"
    params:
        code=job_code("prepare"),
        image_size=config["prepare"]["image_size"],
        image_level_only=config["data"]["image_level_only"],
        allow_empty_masks=config["prepare"]["allow_empty_masks"],
        val_fraction=config["prepare"]["val_fraction"],
    message:
        "Preparing {wildcards.name}/{wildcards.cls}"
    script:
        "../scripts/prepare.py"
