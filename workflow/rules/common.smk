import os
import shutil
import sys
from pathlib import Path

from skrd4ad import engines, jobcode
from skrd4ad import paths
from skrd4ad.errors import format_error
from skrd4ad.jobparams import AGGREGATE_PARAM_KEYS, train_param_keys
from skrd4ad.params import lookup, validate_params
from skrd4ad.data import sources

# Validate before the DAG is built: unknown keys and bad values fail here, naming the key.
# Defaults from the schema are filled in, exactly as the DVC stage scripts do.  A bad params
# file or a plug-in that cannot be loaded is one line, as in the stage scripts (no traceback).
try:
    # against skrd4ad/params.schema.yaml (workflow/schemas/ links to it)
    validate_params(config)
except Exception as err:  # a params error, or a plug-in that cannot be loaded
    # the one line, as the stage scripts and the CLI print it
    sys.exit(format_error(err))

# Reruns follow the code of the package that runs (skrd4ad/jobcode.py); dvc.yaml lists this
# folder's files, so the two must be the same copy (the README's editable install).
if workflow.is_main_process and jobcode.ROOT != Path(workflow.basedir).resolve():
    print(
        f"Warning: skrd4ad is imported from {jobcode.ROOT}, not from this workflow's folder "
        f"{workflow.basedir}: jobs re-run when that copy's code changes; pip install -e . here",
        file=sys.stderr,
    )

# One engine at a time on this tree (skrd4ad/engines.py).  Snakemake parses this file before it
# knows whether it will run jobs (-n, --summary, --report, --lint, --unlock all parse it, and so
# does every remote job), so parsing takes no lock: a dry run only warns.  A real run takes DVC's
# lock in `onstart`, which only the main process of a real run calls (not -n, not remote jobs,
# which get --no-hooks), after the DAG is built and before the first job; it keeps the lock
# until it exits.  Do not add another `onstart` elsewhere: it would replace this one.
if (
    workflow.is_main_process
    and workflow.output_settings.dryrun
    and (holder := engines.dvc_holder())
):
    print(
        f"Warning: DVC is running on this tree ({holder}); outputs may change under this dry run",
        file=sys.stderr,
    )


onstart:
    try:
        engines.hold_for_snakemake()
    except engines.EngineBusy as err:
        sys.exit(str(err))  # the message alone: a traceback would hide it


NAME = config["data"]["name"]
TAG = paths.report_tag(config)
P = paths.PATHS
CLASSES = config["data"]["classes"]
VARIANTS = config["model"]["variants"]
SEEDS = config["train"]["seeds"]
ARCH = config["teacher"]["arch"]
TEACHER_SOURCE = config["teacher"]["source"]


wildcard_constraints:
    name=r"[A-Za-z0-9_.-]+",
    cls=r"[A-Za-z0-9_.-]+",
    variant="|".join(VARIANTS),
    seed=r"\d+",


def download_params(wildcards):
    """The data settings a download depends on (a param, so changing them re-runs it)."""
    return {k: config["data"][k] for k in ("dataset", "folder", "synthetic", "mirror")}


def source_files(wildcards):
    """Every file of a folder dataset: editing, adding or removing an image re-runs download
    (DVC: the dependency on ``data.folder``)."""
    if not sources.get(config["data"]["dataset"]).user_folder:
        return []
    return sorted(
        str(f)
        for f in Path(config["data"]["folder"]).expanduser().rglob("*")
        if f.is_file()
    )


def train_config(wildcards):
    """The params one training job depends on, the same keys dvc.yaml declares
    (``train_param_keys``); a param, so changing one class's or one variant's settings
    re-runs only those jobs, and where or how often a job saves its state re-runs none.
    """
    keys = train_param_keys(wildcards.cls, wildcards.variant)
    return {k: lookup(config, k) for k in keys}


def aggregate_params(wildcards):
    """The params the aggregate reads, the same keys dvc.yaml declares
    (``AGGREGATE_PARAM_KEYS``); a param, so a new contrast re-runs the aggregate.
    """
    return {k: lookup(config, k) for k in AGGREGATE_PARAM_KEYS}


def job_code(job):
    """A param function: the digest of the code ``job`` runs (skrd4ad/jobcode.py, the same files
    dvc.yaml lists and its ``code`` stage stamps), so editing that code re-runs the job, and a
    fresh clone, a new mtime or a reinstall with the same code re-runs nothing.  train/evaluate
    add their variant's own code, download/prepare the dataset source's, wherever installed.
    """
    kind = jobcode.OWN.get(job)

    def digest(wildcards):
        if kind == "variant":
            return jobcode.job_digest(job, wildcards.variant)
        if kind == "source":
            return jobcode.job_digest(job, config["data"]["dataset"])
        return jobcode.job_digest(job)

    return digest


def _gpus_for(device):
    """1 when a job on ``device`` runs on a GPU (cuda*, or auto with a GPU on this host), else 0."""
    if device == "cpu":
        return 0
    if device.startswith("cuda"):
        return 1
    return (
        1
        if shutil.which("nvidia-smi") and os.environ.get("CUDA_VISIBLE_DEVICES") != ""
        else 0
    )


def train_gpus(wildcards):
    return _gpus_for(config["train"]["device"])


def eval_gpus(wildcards):
    return _gpus_for(config["evaluate"]["device"])


def all_outputs():
    return [engines.PARAMS_CHECK, *paths.aggregate_outputs(NAME, TAG)]


# DVC's first stage, validate_params, has its Snakemake twin in its own file (Snakemake's lint
# wants rules and functions apart).
include: "params.smk"
