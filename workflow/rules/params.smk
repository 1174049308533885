# DVC's first stage (dvc.yaml): there it stops a bad params.yaml before any stage removes its
# outputs.  Snakemake validates while parsing (common.smk); this job only writes the same constant
# file, so both engines declare the same outputs and `dvc commit` can adopt a Snakemake run.
rule validate_params:
    output:
        engines.PARAMS_CHECK,
    log:
        "logs/validate_params.log",
    localrule: True
    conda:
        "../envs/skrd4ad.yaml"
    params:
        code=job_code("validate_params"),
    message:
        "Recording that the params are valid ({output})"
    script:
        "../scripts/validate_params.py"
