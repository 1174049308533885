"""The pipeline on a real Slurm cluster: ``profiles/slurm`` with ``snakemake --executor slurm``.

Nothing is mocked. The ``cluster`` fixture (``tests/slurm_cluster.py``) installs Debian's
``slurm-wlm`` and ``munge`` with apt-get when ``slurmctld`` is missing (the test is skipped only
when that is impossible: not root, no apt-get, apt-get failing, or a foreign
``/etc/slurm/slurm.conf``), writes a one-node ``slurm.conf`` for this machine (its real CPUs
and memory, ``select/cons_tres``, ``proctrack/linuxproc``), starts ``munged``, ``slurmctld``
and ``slurmd``, waits for ``sinfo`` to show the node idle, and stops all three by their pid
files afterwards, also when the test fails.

The test runs the TINY configuration twice from one git commit (a copy and a clone of it, so
the commit recorded in checkpoints and metrics is the same): once through Slurm with the
profile (``--executor slurm --workflow-profile profiles/slurm --jobs 4``) and, at the same
time, locally (``--cores 2``). Both runs use one thread per train/evaluate job
(``--set-threads train=1 evaluate=1``), which makes them bitwise reproducible, so it checks:

* the same files under ``data/``, ``results/`` and ``logs/``;
* every file under ``data/`` and ``results/`` byte for byte equal (checkpoints, metrics,
  scores, curves, tables, figures, prepared arrays) after two normalisations: the repository's
  absolute path in text, and the ``seconds`` column of the training logs;
* every job ran through Slurm: one ``sbatch`` job per rule instance (1 download, 1
  fetch_teacher, 2 prepare, 4 train, 4 evaluate, 1 aggregate) that ``squeue`` lists as
  COMPLETED with the plugin's ``rule_<name>`` comment, and each job's Slurm log
  (``.snakemake/slurm_logs/rule_<name>/<wildcards>/<jobid>.log``) names one of those job ids.

The status polling options only make the plugin notice finished jobs sooner than its cluster
defaults (40 s); ``squeue`` is the status command because ``sacct`` needs slurmdbd.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import io
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import slurm_cluster
from pipeline_fixtures import BIN, ENV, TINY, check_results, make_copy, run

pytestmark = pytest.mark.slow

SNAKEMAKE = str(BIN / "snakemake")
THREADS = ["--set-threads", "train=1", "evaluate=1"]  # same in both runs: bitwise equal results
FAST_STATUS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
               "--seconds-between-status-checks", "1", "--slurm-keep-successful-logs"]
EXPECTED_JOBS = {"download": 1, "fetch_teacher": 1, "prepare": 2, "train": 4, "evaluate": 4, "aggregate": 1}


@pytest.fixture(scope="module")
def cluster() -> Iterator[slurm_cluster.Cluster]:
    try:
        running = slurm_cluster.start()
    except slurm_cluster.SlurmUnavailable as err:
        pytest.skip(f"no Slurm cluster: {err}")
    try:
        yield running
    finally:
        running.stop()


def files(repo: Path) -> set[str]:
    return {str(p.relative_to(repo)) for top in ("data", "results", "logs") for p in (repo / top).rglob("*")
            if p.is_file()}


def normalized(repo: Path, rel: str) -> bytes:
    """The file's bytes with the repository path replaced and a ``seconds`` column dropped."""
    data = (repo / rel).read_bytes().replace(str(repo).encode(), b"<repo>")
    if rel.endswith(".tsv"):
        rows = list(csv.reader(io.StringIO(data.decode()), delimiter="\t"))
        if rows and "seconds" in rows[0]:
            col = rows[0].index("seconds")
            data = "\n".join("\t".join(r[:col] + r[col + 1:]) for r in rows).encode()
    return data


def slurm_logs(repo: Path) -> dict[str, list[Path]]:
    """Slurm job logs per rule (``.snakemake/slurm_logs/rule_<name>/<wildcards>/<jobid>.log``)."""
    logs: dict[str, list[Path]] = {}
    for path in sorted((repo / ".snakemake/slurm_logs").rglob("*.log")):
        rule = next(part for part in path.relative_to(repo).parts if part.startswith("rule_"))
        logs.setdefault(rule.removeprefix("rule_"), []).append(path)
    return logs


def test_slurm_run_matches_local_run(cluster: slurm_cluster.Cluster, tmp_path: Path) -> None:
    assert importlib.util.find_spec("snakemake_executor_plugin_slurm"), \
        "snakemake-executor-plugin-slurm is missing: pip install -e '.[pipeline]'"
    local = make_copy(tmp_path / "local", copy.deepcopy(TINY))
    on_slurm = tmp_path / "slurm"
    run(["git", "clone", "-q", str(local), str(on_slurm)], tmp_path)
    assert (local / "params.yaml").read_bytes() == (on_slurm / "params.yaml").read_bytes()

    with open(tmp_path / "local.log", "w") as local_log:
        local_run = subprocess.Popen([SNAKEMAKE, "--cores", "2", *THREADS], cwd=local, env=ENV,
                                     stdout=local_log, stderr=subprocess.STDOUT)
        try:
            proc = subprocess.run(
                [SNAKEMAKE, "--executor", "slurm", "--workflow-profile", "profiles/slurm", "--jobs", "4",
                 *THREADS, *FAST_STATUS],
                cwd=on_slurm, env=ENV, capture_output=True, text=True, timeout=900)
            local_rc = local_run.wait(timeout=900)
        finally:
            if local_run.poll() is None:
                local_run.kill()
    job_logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}"
                         for paths in slurm_logs(on_slurm).values() for p in paths[-2:])
    assert proc.returncode == 0, (f"Slurm run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n"
                                  f"{job_logs}\n{cluster.log_tail()}")
    assert local_rc == 0, (tmp_path / "local.log").read_text()[-5000:]
    check_results(on_slurm)

    # every rule instance was one Slurm job, finished as COMPLETED, with its own log
    jobs = cluster.jobs()
    per_rule = Counter(comment.removeprefix("rule_").split("_wildcards_")[0] for _, _, comment in jobs)
    assert per_rule == EXPECTED_JOBS, jobs
    assert {state for _, state, _ in jobs} == {"COMPLETED"}, jobs
    logs = slurm_logs(on_slurm)
    assert {rule: len(paths) for rule, paths in logs.items()} == EXPECTED_JOBS, logs
    assert {p.stem for paths in logs.values() for p in paths} == {job_id for job_id, _, _ in jobs}

    # the same outputs, and the same bytes
    assert files(on_slurm) == files(local), (sorted(files(on_slurm) ^ files(local)))
    compared = [rel for rel in sorted(files(local)) if rel.startswith(("data/", "results/"))]
    differ = [rel for rel in compared if normalized(local, rel) != normalized(on_slurm, rel)]
    assert not differ, f"{len(differ)} of {len(compared)} files differ between Slurm and local: {differ[:20]}"
    assert sum(rel.endswith("metrics.json") for rel in compared) == 4
    assert sum(rel.endswith(".pt") for rel in compared) == 4
