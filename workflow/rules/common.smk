import os
import shutil
from pathlib import Path

from skrd4ad import pipeline

# Validate before the DAG is built: unknown keys and bad values fail here, naming the key.
# Defaults from the schema are filled in, exactly as the DVC stage scripts do.
pipeline.validate_params(config, workflow.source_path("../schemas/params.schema.yaml"))

NAME = config["data"]["name"]
P = pipeline.PATHS
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
    return {k: config["data"][k] for k in ("dataset", "folder", "synthetic")}


def source_files(wildcards):
    """Every file of a folder dataset: editing, adding or removing an image re-runs download
    (DVC: the dependency on ``data.folder``)."""
    if config["data"]["dataset"] != "folder":
        return []
    return sorted(str(f) for f in Path(config["data"]["folder"]).expanduser().rglob("*") if f.is_file())


def train_config(wildcards):
    """Effective training settings of one job (overrides applied); a param, so changing
    one class's or one variant's settings re-runs only those jobs."""
    return pipeline.train_config(config, wildcards.cls, wildcards.variant, int(wildcards.seed)).to_dict()


def _gpus_for(device):
    """1 when a job on ``device`` runs on a GPU (cuda*, or auto with a GPU on this host), else 0."""
    if device == "cpu":
        return 0
    if device.startswith("cuda"):
        return 1
    return 1 if shutil.which("nvidia-smi") and os.environ.get("CUDA_VISIBLE_DEVICES") != "" else 0


def train_gpus(wildcards):
    return _gpus_for(config["train"]["device"])


def eval_gpus(wildcards):
    return _gpus_for(config["evaluate"]["device"])


def all_outputs():
    return pipeline.aggregate_outputs(NAME)
