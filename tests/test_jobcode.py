"""The code of a pipeline job (skrd4ad.jobcode): which files, and a digest that follows the code's
bytes, not where or when it was installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skrd4ad import jobcode
from skrd4ad.models import variants

REPO = Path(__file__).resolve().parents[1]
#: (job, plug-in) pairs whose digests the tests compare.
CASES = [("validate_params", None), ("fetch_teacher", None), ("aggregate", None), ("train", "rd4ad"),
         ("train", "rdpp"), ("evaluate", "skrd4ad"), ("evaluate", "rdpp"), ("download", "synthetic"),
         ("prepare", "vad")]


def _digests_in(root: Path) -> dict[str, str]:
    """Digests computed by a fresh interpreter on the copy of the code at ``root``."""
    code = ("import json, sys; from skrd4ad import jobcode; "
            f"print(json.dumps({{f'{{j}}:{{p}}': jobcode.job_digest(j, p) for j, p in {CASES!r}}}))")
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _copy_code(dest: Path) -> Path:
    shutil.copytree(REPO / "skrd4ad", dest / "skrd4ad", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "workflow" / "scripts", dest / "workflow" / "scripts")
    return dest


def test_digest_follows_bytes_not_place_or_time(tmp_path: Path) -> None:
    """A reinstall elsewhere and a new mtime give the same digests; a comment added to RD++'s loss
    changes the RD++ jobs' digests and no other (comments count: DVC hashes bytes too)."""
    here = _digests_in(REPO)
    copy = _copy_code(tmp_path / "elsewhere")
    assert _digests_in(copy) == here
    for path in copy.rglob("*.py"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert _digests_in(copy) == here
    loss = copy / "skrd4ad/models/variants/rdpp/loss.py"
    loss.write_text(loss.read_text() + "# a comment\n")
    edited = _digests_in(copy)
    assert {k for k in here if edited[k] != here[k]} == {"train:rdpp", "evaluate:rdpp"}
    metrics = copy / "skrd4ad/metrics/ranking.py"
    metrics.write_text(metrics.read_text() + "\n")
    again = _digests_in(copy)
    assert {k for k in here if again[k] != edited[k]} == {"evaluate:skrd4ad", "evaluate:rdpp"}


def test_job_files_are_shared_plus_own() -> None:
    files = jobcode.job_files("train", "rdpp")
    assert set(files) == set(jobcode.shared_files("train")) | set(jobcode.own_files("variant", "rdpp"))
    assert "skrd4ad/models/variants/rdpp/loss.py" not in jobcode.job_files("train", "rd4ad")
    assert jobcode.job_digest("train", "rd4ad") != jobcode.job_digest("train", "skrd4ad")
    with pytest.raises(ValueError, match="runs one variant"):
        jobcode.job_files("train")
    with pytest.raises(ValueError, match="runs no variant or source"):
        jobcode.job_files("aggregate", "rd4ad")
    with pytest.raises(ValueError, match="unknown pipeline job 'trian'"):
        jobcode.shared_files("trian")


def test_stamp_lists_each_own_file_with_its_sha256() -> None:
    import hashlib

    stamp = jobcode.own_stamp("variant", "rdpp")
    assert stamp["kind"] == "variant" and stamp["name"] == "rdpp"
    loss = "skrd4ad/models/variants/rdpp/loss.py"
    assert stamp["files"][loss] == hashlib.sha256((REPO / loss).read_bytes()).hexdigest()
    assert sorted(stamp["files"]) == sorted(jobcode.own_files("variant", "rdpp"))
    assert jobcode.stamp_name("variant", "rdpp") == "variant-rdpp.json"


PLUGIN = '''
from skrd4ad.models.variants.rd4ad import RD4AD


class Mine(RD4AD):
    name = "mine"
    label = "Mine"

    def loss(self, outputs, config):
        from extplug.helper import scale

        terms = super().loss(outputs, config)
        return {k: scale(v) for k, v in terms.items()}


VARIANT = Mine()
'''


@pytest.fixture
def outside_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A variant installed outside the repository: package ``extplug`` with a helper module,
    registered through SKRD4AD_VARIANTS."""
    pkg = tmp_path / "site" / "extplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "variant.py").write_text(PLUGIN)
    (pkg / "helper.py").write_text("def scale(x):\n    return x\n")
    (pkg / "unused.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # an outer entry too (a venv inside a project): the longest names it
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(variants.ENV_VAR, "extplug.variant")
    variants.refresh()
    yield pkg
    variants.refresh()


def test_a_plugin_outside_the_repository_is_followed_through_its_own_package(outside_plugin: Path) -> None:
    own = jobcode.own_files("variant", "mine")
    # its module first; what it imports of its package; the built-in it subclasses (a change there
    # changes it too); not the module it never imports, nor the stages' shared code
    assert own == ["extplug/variant.py", "extplug/__init__.py", "extplug/helper.py",
                   "skrd4ad/models/variants/rd4ad/__init__.py"]
    before = {v: jobcode.job_digest("train", v) for v in ("mine", "rd4ad", "rdpp")}
    helper = outside_plugin / "helper.py"
    helper.write_text(helper.read_text() + "# tuned\n")
    after = {v: jobcode.job_digest("train", v) for v in ("mine", "rd4ad", "rdpp")}
    assert after["mine"] != before["mine"] and after["rd4ad"] == before["rd4ad"] and after["rdpp"] == before["rdpp"]
    (outside_plugin / "unused.py").write_text("X = 2\n")
    assert jobcode.job_digest("train", "mine") == after["mine"]


def test_module_main_prints_what_dvc_yaml_lists() -> None:
    """``python -m skrd4ad.jobcode`` (the command the test failures point to) prints each stage's
    list as dvc_deps gives it, and each plug-in's own files."""
    proc = subprocess.run([sys.executable, "-m", "skrd4ad.jobcode"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("  - "):
            blocks[key].append(line[4:])
        else:
            key = line.rstrip(":")
            blocks[key] = []
    for job in jobcode.JOBS:
        assert blocks[job] == jobcode.dvc_deps(job), job
    assert blocks["variant rdpp"] == jobcode.own_files("variant", "rdpp")
    assert len(blocks["train"]) > 20


@pytest.mark.parametrize("job", sorted(jobcode.JOBS))
def test_what_a_stage_script_imports_at_start_is_in_its_shared_code(job: str) -> None:
    """A check independent of the AST walk: run the script's top-level imports in a fresh
    interpreter and list the package modules loaded; every one is shared code of the job, or a
    plug-in module (which the registries import to list names, and which counts per job)."""
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='probe'); "
            "print('\\n'.join(sorted(m.__file__ for m in list(sys.modules.values()) "
            "if getattr(m, '__file__', None))))")
    proc = subprocess.run([sys.executable, "-c", code, jobcode.JOBS[job]], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = {Path(f).resolve().relative_to(REPO).as_posix() for f in proc.stdout.split()
              if Path(f).resolve().is_relative_to(REPO / "skrd4ad")}
    plugins = ("skrd4ad/models/variants/", "skrd4ad/data/sources/")
    shared = set(jobcode.shared_files(job))
    missing = sorted(f for f in loaded - shared if not (f.startswith(plugins) and f.count("/") >= 4))
    assert "skrd4ad/params.py" in loaded and not missing, missing


def test_every_snakemake_rule_reruns_on_its_own_jobs_code() -> None:
    import re

    rules = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", smk.read_text(), flags=re.M):
            rules[name] = body
    assert set(jobcode.JOBS) - {"code"} <= set(rules)  # `code` is DVC's stamp stage
    for name in set(jobcode.JOBS) - {"code"}:
        assert f'code=job_code("{name}"),' in rules[name], name


def test_doctest() -> None:
    import doctest

    assert doctest.testmod(jobcode).failed == 0


# ---------------------------------------------------------------- both engines, end to end

def _job_of(output: str) -> str | None:
    """DVC's stage name for one of Snakemake's outputs (None for outputs of no stage)."""
    import re

    patterns = [(r"results/[^/]+/(?:checkpoints|train)/([^/]+)/seed(\d+)/([^/]+)\.(?:pt|tsv)$", "train@{2}-{0}-{1}"),
                (r"results/[^/]+/eval/([^/]+)/seed(\d+)/([^/]+)/", "evaluate@{2}-{0}-{1}"),
                (r"data/prepared/[^/]+/([^/]+)$", "prepare@{0}"), (r"data/raw/[^/]+$", "download"),
                (r"data/params\.ok$", "validate_params"), (r"data/teacher/", "fetch_teacher"),
                (r"results/(?:tables|figures)/|results/[^/]+/plots", "aggregate")]
    for pattern, name in patterns:
        m = re.search(pattern, output)
        if m:
            return name.format(*m.groups())
    return None


@pytest.mark.slow
def test_both_engines_rerun_exactly_the_jobs_whose_code_changed(tmp_path: Path, outside_plugin: Path) -> None:
    """After one run, edit one file at a time: `dvc status` (after the `code` stage refreshed its
    stamps, which runs no job) and Snakemake's params check name the same jobs, and the ones the
    issue asks for: a variant's own code its trainings and evaluations (also a plug-in outside the
    repository), training code every training, evaluation code every evaluation, the dataset
    source its download and prepares, another source nothing."""
    import copy as copy_module

    from pipeline_fixtures import BIN, ENV, TINY, make_copy

    params = copy_module.deepcopy(TINY)
    params["model"]["variants"] = ["rd4ad", "skrd4ad", "mine"]
    params["train"]["variant_overrides"] = {"rd4ad": {}, "skrd4ad": {}, "mine": {}}
    repo = make_copy(tmp_path, params)
    env = {**ENV, "PYTHONPATH": f"{repo}{os.pathsep}{outside_plugin.parent}", variants.ENV_VAR: "extplug.variant"}
    snakemake, dvc = str(BIN / "snakemake"), str(BIN / "dvc")

    def run(*cmd: str) -> str:
        proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def dvc_changed() -> set[str]:
        run(dvc, "repro", "--single-item", "code")  # refresh the stamps: runs no job
        return set(json.loads(run(dvc, "status", "--json"))) - {"code"}

    def snakemake_changed() -> set[str]:
        # (--list-params-changes lists every output in Snakemake 9.x; the summary's status is right)
        rows = [line.split("\t") for line in run(snakemake, "--summary").splitlines()]
        return {_job_of(r[0]) for r in rows if len(r) > 4 and r[4] == "params changed"}

    run(snakemake, "--cores", "2")
    run(dvc, "repro", "--single-item", "code")
    run(dvc, "commit", "-f")  # DVC adopts Snakemake's outputs
    run(snakemake, "--cores", "1", "--touch")  # and Snakemake the times DVC's relinking gave them
    assert dvc_changed() == set() and snakemake_changed() == set()

    def jobs(stage: str, variants_: list[str]) -> set[str]:
        return {f"{stage}@{c}-{v}-111" for c in ("brick", "grass") for v in variants_}

    cases = {
        "skrd4ad/models/variants/skrd4ad/__init__.py": jobs("train", ["skrd4ad"]) | jobs("evaluate", ["skrd4ad"]),
        str(outside_plugin / "helper.py"): jobs("train", ["mine"]) | jobs("evaluate", ["mine"]),
        "skrd4ad/train.py": jobs("train", ["rd4ad", "skrd4ad", "mine"]),
        "skrd4ad/metrics/ranking.py": jobs("evaluate", ["rd4ad", "skrd4ad", "mine"]),
        "skrd4ad/data/sources/synthetic/generate.py": {"download", "prepare@brick", "prepare@grass"},
        "skrd4ad/data/sources/vad/__init__.py": set(),
    }
    for rel, expected in cases.items():
        path = repo / rel
        original = path.read_bytes()
        path.write_bytes(original + b"# edited\n")
        try:
            assert (dvc_changed(), snakemake_changed()) == (expected, expected), rel
        finally:
            path.write_bytes(original)
    assert dvc_changed() == set() and snakemake_changed() == set()  # the same bytes again: nothing


def test_the_committed_run_is_up_to_date_in_a_fresh_clone(tmp_path: Path) -> None:
    """A fresh clone of the committed tree, without the DVC cache: once the two constant-output
    stages have written their files (params check, code stamps), `dvc status` reports only data the
    cache holds (prepared data, teacher weights, checkpoints) as missing: no code, params or command
    of any stage differs from what dvc.lock recorded for the committed results."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(clone), "DVC_NO_ANALYTICS": "1"}
    bin_dir = Path(sys.executable).parent
    for script, out in (("validate_params", "data/params.ok"), ("code", "data/code")):
        subprocess.run([sys.executable, f"workflow/scripts/{script}.py", "--out", out], cwd=clone, env=env,
                       check=True, capture_output=True, timeout=300)
    proc = subprocess.run([str(bin_dir / "dvc"), "status", "--json"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout)
    cached = ("data/raw/", "data/prepared/", "data/teacher/", "results/synthetic/checkpoints/")
    problems = []
    for stage, items in status.items():
        for item in items:
            if item == "always changed" and stage == "code":
                continue
            if not isinstance(item, dict):
                problems.append(f"{stage}: {item}")
                continue
            for kind, changes in item.items():
                for path, what in (changes.items() if isinstance(changes, dict) else [(changes, "")]):
                    ok = (kind == "changed deps" and what == "deleted" and path.startswith(cached)) or (
                        kind == "changed outs" and what == "not in cache") or (
                        # the folder holds the default jobs' figures, which only the DVC cache has
                        stage == "aggregate" and path == "results/synthetic/eval" and what == "modified")
                    if not ok:
                        problems.append(f"{stage}: {kind} {path} {what}")
    assert "train@brick-rd4ad-111" in status  # DVC did look at the stages (its checkpoint is not in git)
    assert not problems, problems[:10]
