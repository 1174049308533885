# skrd4ad: raw data -> prepared cache -> per-class models -> metrics -> comparison table.
# Config: params.yaml (shared with dvc.yaml), validated against skrd4ad/params.schema.yaml.
#   snakemake --cores all                      # the embedded default
#   snakemake --cores all --configfile workflow/config/paper.yaml workflow/config/mvtec.yaml   # the paper's setup


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
