"""Issue 33 items 1 and 8: ``data.mirror`` (a copy of a source's archive behind a firewall) is a
validated param that both engines declare and the download stage uses, tested against a local
HTTP server; the stage's messages (the converter's counts, the licence) go to its log."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_fixtures import BIN, ENV, REPO, TINY, make_copy
from test_download import _sha, _url, server  # noqa: F401  (the local HTTP server fixture)
from test_sources import vad_zip

from skrd4ad.data.sources import FETCH_MARKER

COUNTS = "VAD archive (VAD): train/bad 2, train/good 3, test/bad 2, test/bad_unseen_defects 1, test/good 2"


def vad_params(urls: list[str], sha256: str, name: str = "vad") -> dict:
    params = copy.deepcopy(TINY)
    params["data"] = {"dataset": "vad", "name": name, "classes": ["vad"], "mirror": {"urls": urls, "sha256": sha256}}
    params["train"]["class_overrides"] = {"vad": {}}
    return params


def test_mirror_param_is_validated() -> None:
    from skrd4ad.errors import ParamsError
    from skrd4ad.params import validate_params

    assert validate_params({"data": {}})["data"]["mirror"] is None
    ok = {"urls": ["https://intranet/VAD.zip"], "sha256": "A" * 64}
    assert validate_params({"data": {"mirror": ok}})["data"]["mirror"] == ok
    for mirror, key in [({"urls": ["https://h/VAD.zip"], "sha256": "abc"}, "data.mirror.sha256"),
                        ({"urls": [], "sha256": "0" * 64}, "data.mirror.urls"),
                        ({"urls": ["/mnt/VAD.zip"], "sha256": "0" * 64}, "data.mirror.urls.0"),
                        ({"urls": ["https://h/VAD.zip"]}, "data.mirror"),
                        ({"url": "https://h/VAD.zip", "sha256": "0" * 64}, "data.mirror")]:
        with pytest.raises(ParamsError, match=rf"invalid params:\s+{re.escape(key)}: "):
            validate_params({"data": {"mirror": mirror}})


def test_both_engines_rerun_download_on_the_same_data_params() -> None:
    """dvc.yaml's download stage and Snakemake's download rule (``download_params`` in
    workflow/rules/common.smk) declare the same ``data`` keys, data.mirror among them."""
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["download"]["params"]
    common = (REPO / "workflow/rules/common.smk").read_text()
    body = common.split("def download_params(wildcards):")[1].split("\ndef ")[0]
    keys = re.search(r"for k in \(([^)]*)\)", body).group(1)
    assert [f"data.{k}" for k in re.findall(r'"([a-z_]+)"', keys)] == declared
    assert "data.mirror" in declared
    rule = (REPO / "workflow/rules/data.smk").read_text().split("rule download:")[1].split("\nrule ")[0]
    assert "data=download_params," in rule


def _dvc_stage(params: dict, tmp_path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The download stage as dvc.yaml runs it (``python workflow/scripts/download.py --out``)."""
    from skrd4ad.params import validate_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(validate_params(copy.deepcopy(params))))
    return subprocess.run([sys.executable, "workflow/scripts/download.py", "--params", str(tmp_path / "params.yaml"),
                           "--out", str(out)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def _error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    return proc.stderr.strip().splitlines()[-1].split("ERROR skrd4ad.stage.download: ", 1)[1]


def test_download_stage_fetches_from_the_mirror_and_names_its_key(server, tmp_path: Path) -> None:  # noqa: F811
    """The DVC stage command with data.mirror: fetched from the mirror only; a re-run with another
    mirror archive (DVC removed the output first) names data.mirror.sha256, whichever of the
    archive, the download or the finished fetch it is that differs."""
    first, second = vad_zip(), vad_zip(top="vad/")
    server.files.update({"/intranet/VAD.zip": first, "/intranet/VAD2.zip": second})
    raw = tmp_path / "raw"
    url = _url(server, "/intranet/VAD.zip")
    proc = _dvc_stage(vad_params([url], _sha(first)), tmp_path, raw / "vad")
    assert proc.returncode == 0, proc.stderr
    assert server.log == [("/intranet/VAD.zip", None)]  # the mirror, never the source's own locations
    assert f"fetching dataset vad (vad from {url}) into {raw / 'vad'}" in proc.stderr and COUNTS in proc.stderr
    assert yaml.safe_load((raw / "vad" / FETCH_MARKER).read_text())["url"] == url

    shutil.rmtree(raw / "vad")  # as DVC does before re-running a stage
    url2 = _url(server, "/intranet/VAD2.zip")
    message = _error(_dvc_stage(vad_params([url2], _sha(second)), tmp_path, raw / "vad"))
    zip_path = raw / "downloads" / "VAD.zip"
    assert message == (f"{zip_path} exists but its sha256 is {_sha(first)}, expected {_sha(second)}; delete it to "
                       f"download again, or set data.mirror.sha256 to {_sha(first)} if it is the archive you want")

    zip_path.unlink()
    message = _error(_dvc_stage(vad_params([url2], _sha(first)), tmp_path, raw / "vad"))
    assert message.startswith(f"sha256 mismatch for {url2}: expected {_sha(first)}, got {_sha(second)}; ")
    assert message.endswith(f"if it is the archive you want, set data.mirror.sha256 to {_sha(second)}")

    assert _dvc_stage(vad_params([url2], _sha(second), name="vad2"), tmp_path, raw / "vad2").returncode == 0
    message = _error(_dvc_stage(vad_params([url], _sha(first), name="mine"), tmp_path, raw / "mine"))
    assert message == (f"{raw / 'vad'} is already fetched from {url2} (sha256 {_sha(second)}), not the archive asked "
                       f"for (sha256 {_sha(first)}); delete {raw / 'vad'} and {zip_path} to fetch that one, or set "
                       f"data.mirror.sha256 to {_sha(second)}")


def test_a_mirror_for_a_dataset_that_is_not_downloaded_is_refused(tmp_path: Path) -> None:
    params = copy.deepcopy(TINY)
    params["data"]["mirror"] = {"urls": ["https://h/x.zip"], "sha256": "0" * 64}
    assert _error(_dvc_stage(params, tmp_path, tmp_path / "raw" / "synthetic")) == (
        "data.mirror is set, but dataset synthetic is not downloaded; set data.mirror to null")


_AS_SNAKEMAKE = """
import runpy, sys, types, yaml
from skrd4ad.data.sources import Location, get
from skrd4ad.params import validate_params
source = type(get("vad"))  # its archive on the test's server (independent of data.mirror)
source.locations, source.sha256 = (Location(sys.argv[3]),), sys.argv[4]
params = validate_params({"data": {"dataset": "vad", "classes": ["vad"]}})
job = types.SimpleNamespace(config=params, output=[sys.argv[1]], log=[sys.argv[2]])
runpy.run_path("workflow/scripts/download.py", init_globals={"snakemake": job}, run_name="__snakemake__")
"""


def test_under_snakemake_the_sources_messages_go_to_the_log(server, tmp_path: Path) -> None:  # noqa: F811
    """Item 8: the script as Snakemake runs it (``snakemake`` in its globals, a ``log:`` file): the
    converter's counts and the licence are in logs/download/<name>.log, not on the console."""
    archive = vad_zip()
    server.files["/VAD.zip"] = archive
    log = tmp_path / "logs" / "download" / "vad.log"
    proc = subprocess.run([sys.executable, "-c", _AS_SNAKEMAKE, str(tmp_path / "raw" / "vad"), str(log),
                           _url(server, "/VAD.zip"), _sha(archive)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    text = log.read_text()
    assert COUNTS in text and "licence CC BY-NC-SA 4.0" in text and "download done in" in text


def test_snakemake_downloads_from_the_mirror_and_reruns_when_it_changes(server, tmp_path: Path) -> None:  # noqa: F811
    """A real Snakemake run of the download rule in a copy of the repository, data.mirror on a
    local server: fetched from there, the counts in the job's log only; a new mirror re-runs it."""
    archive = vad_zip()
    server.files.update({"/intranet/VAD.zip": archive, "/copy/VAD.zip": archive})
    repo = make_copy(tmp_path, vad_params([_url(server, "/intranet/VAD.zip")], _sha(archive)))
    snakemake = [str(BIN / "snakemake"), "--cores", "1", "data/raw/vad"]
    proc = subprocess.run(snakemake, cwd=repo, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p for p, _ in server.log] == ["/intranet/VAD.zip"]
    assert COUNTS in (repo / "logs/download/vad.log").read_text()
    assert "VAD archive" not in proc.stdout + proc.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["mirror"]["urls"] = [_url(server, "/copy/VAD.zip")]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = subprocess.run([*snakemake, "-n"], cwd=repo, env=ENV, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and re.search(r"\bdownload\s+1\b", dry.stdout), dry.stdout[-3000:]


@pytest.mark.slow
def test_dvc_repro_downloads_from_the_mirror_and_reruns_when_it_changes(server, tmp_path: Path) -> None:  # noqa: F811
    """A real ``dvc repro download`` in a copy of the repository, data.mirror on a local server:
    fetched from there, recorded in dvc.lock; a new mirror makes the stage out of date."""
    archive = vad_zip()
    server.files.update({"/intranet/VAD.zip": archive, "/copy/VAD.zip": archive})
    url = _url(server, "/intranet/VAD.zip")
    repo = make_copy(tmp_path, vad_params([url], _sha(archive)))
    proc = subprocess.run([str(BIN / "dvc"), "repro", "download"], cwd=repo, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p for p, _ in server.log] == ["/intranet/VAD.zip"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["download"]["params"]["params.yaml"]
    assert lock["data.mirror"] == {"urls": [url], "sha256": _sha(archive)}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["mirror"]["urls"] = [_url(server, "/copy/VAD.zip")]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = subprocess.run([str(BIN / "dvc"), "status", "download"], cwd=repo, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert "data.mirror" in status.stdout, status.stdout
