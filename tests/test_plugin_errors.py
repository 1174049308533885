"""A plug-in that fails to import, or a name no plug-in registers (issue 33, items 9 and 10): one
line naming the module, where it was registered and the error, or the bad name and how to register
one, from the CLI, the stage scripts (as DVC runs them) and the Snakefile's parse."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_fixtures import BIN, ENV, REPO, TINY, make_copy

from skrd4ad.cli import main
from skrd4ad.data import sources
from skrd4ad.errors import ParamsError
from skrd4ad.models import variants
from skrd4ad.params import validate_params

#: A plug-in module whose own import fails: a dependency that is not installed.
BROKEN = "import not_installed_dependency_of_the_plugin\n"
ERROR = "ModuleNotFoundError: No module named 'not_installed_dependency_of_the_plugin'"
FIX = "install the package that provides 'not_installed_dependency_of_the_plugin'"
VARIANT_HINT = ("register a plug-in: entry-point group skrd4ad.variants or SKRD4AD_VARIANTS; "
                "README 'Adding a variant in one file'")
SOURCE_HINT = ("register a plug-in: entry-point group skrd4ad.sources or SKRD4AD_SOURCES; "
               "README 'Adding a dataset in one file'")


def broken_plugin(tmp_path: Path, how: str) -> tuple[dict[str, str], str]:
    """An environment with a broken plug-in registered ``how`` (``SKRD4AD_VARIANTS``,
    ``SKRD4AD_SOURCES`` or ``entry point``), and the one line that names it."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    module = plugins / "broken_plugin.py"
    module.write_text(BROKEN)
    path = os.pathsep.join([str(plugins), *filter(None, [ENV.get("PYTHONPATH")])])
    env = {**ENV, "PYTHONPATH": path, "SKRD4AD_VARIANTS": "", "SKRD4AD_SOURCES": ""}
    env.pop("SKRD4AD_DEBUG", None)
    what = f"{module}, line 1: {ERROR}"
    if how == "entry point":
        dist = plugins / "broken_plugin-0.3.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.3\n")
        (dist / "entry_points.txt").write_text("[skrd4ad.variants]\nbroken = broken_plugin:Broken\n")
        return env, (f"entry point broken = broken_plugin:Broken (group skrd4ad.variants, distribution broken-plugin "
                     f"0.3) cannot be loaded ({what}); {FIX}, or pip uninstall broken-plugin")
    env[how] = "broken_plugin"
    kind = "variant" if how == "SKRD4AD_VARIANTS" else "source"
    return env, f"{how}: cannot import {kind} module 'broken_plugin' ({what}); {FIX}, or remove it from {how}"


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["SKRD4AD_VARIANTS", "SKRD4AD_SOURCES", "entry point"])
def test_a_broken_plugin_is_one_line_from_the_cli_and_a_stage_script(tmp_path: Path, how: str) -> None:
    """Every command reads the registries while its options are built: exit 1 and the one line
    (before: a 20-37-line traceback); ``--debug`` or SKRD4AD_DEBUG=1 print the traceback first.
    A stage script as DVC runs it ends with the same message as its one ERROR line."""
    env, line = broken_plugin(tmp_path, how)
    cli = [sys.executable, "-m", "skrd4ad"]
    for argv in (["sources"], ["download", "--dataset", "mvtec", "--root", "r"]):
        proc = run([*cli, *argv], tmp_path, env)
        assert (proc.returncode, proc.stderr) == (1, f"skrd4ad: error: {line}\n"), proc.stderr
    for argv, extra in ((["sources", "--debug"], {}), (["sources"], {"SKRD4AD_DEBUG": "1"})):
        proc = run([*cli, *argv], tmp_path, {**env, **extra})
        assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
        assert proc.stderr.splitlines()[-1] == f"skrd4ad: error: {line}"

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    stage = [sys.executable, str(REPO / "workflow/scripts/validate_params.py"), "--out", "ok"]
    proc = run(stage, tmp_path, env)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.rstrip().endswith(f" ERROR skrd4ad.stage.validate_params: {line}")
    proc = run(stage, tmp_path, {**env, "SKRD4AD_DEBUG": "1"})
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().endswith(f" ERROR skrd4ad.stage.validate_params: {line}")


def test_the_plugin_modules_own_error_is_named_with_its_line(tmp_path: Path) -> None:
    """A module that exists but raises while importing (a syntax error, a bad name) is named with
    the file and line of the error; a module that is not there at all, with how to make it found."""
    from skrd4ad.plugins import PluginError, PluginRegistry

    (tmp_path / "syntax_slip.py").write_text("VARIANT = (\n")
    (tmp_path / "name_slip.py").write_text("import os\nVARIANT = Nope()\n")
    registry = PluginRegistry(kind="variant", kinds="variants", attr="VARIANT", base=variants.Variant,
                              package="no_builtins", package_path=[], group="no.such.group", env_var="X")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(PluginError) as err:
            registry.from_module("syntax_slip", "X")
        assert str(err.value) == (f"X: cannot import variant module 'syntax_slip' ({tmp_path / 'syntax_slip.py'}, "
                                  "line 1: SyntaxError: '(' was never closed); fix the error there, or remove it from X")
        with pytest.raises(PluginError) as err:
            registry.from_module("name_slip", "X")
        assert str(err.value) == (f"X: cannot import variant module 'name_slip' ({tmp_path / 'name_slip.py'}, line 2: "
                                  "NameError: name 'Nope' is not defined); fix the error there, or remove it from X")
        with pytest.raises(ImportError, match=r"^X: cannot import variant module 'not_there' \(No module named "
                                              r"'not_there'\); fix the name or put its folder on PYTHONPATH, or remove "
                                              r"it from X$"):
            registry.from_module("not_there", "X")
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("argv, line", [
    (["train", "--data", "d", "--out", "m.pt", "--variant", "toy"],
     "skrd4ad train: error: argument --variant: invalid choice: 'toy' (choose from 'rd4ad', 'skrd4ad', 'rdpp'; "
     f"or {VARIANT_HINT})"),
    (["download", "--dataset", "toy", "--root", "r"],
     f"skrd4ad download: error: argument --dataset: invalid choice: 'toy' (choose from 'mvtec', 'vad', 'visa'; "
     f"or {SOURCE_HINT})"),
    (["download", "--dataset", "synthetic", "--root", "r"],  # registered, not downloaded: no plug-in hint
     "skrd4ad download: error: argument --dataset: invalid choice: 'synthetic' (choose from 'mvtec', 'vad', 'visa')"),
])
def test_an_unregistered_name_on_the_cli_says_how_to_register_one(argv: list[str], line: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == line


@pytest.mark.parametrize("change, line", [
    ({"model": {"variants": ["rd4ad", "toy"]}},
     f"model.variants.1: 'toy' is not one of ['rd4ad', 'skrd4ad', 'rdpp'] (or {VARIANT_HINT})"),
    ({"train": {"variant_overrides": {"rd4ad": {}, "skrd4ad": {}, "toy": {}}}},
     f"train.variant_overrides: Additional properties are not allowed ('toy' was unexpected) (or {VARIANT_HINT})"),
    ({"data": {"dataset": "toy"}},
     f"data.dataset: 'toy' is not one of ['synthetic', 'folder', 'mvtec', 'vad', 'visa'] (or {SOURCE_HINT})"),
])
def test_an_unregistered_name_in_params_says_how_to_register_one(change: dict, line: str) -> None:
    params = copy.deepcopy(TINY)
    for section, values in change.items():
        params[section].update(values)
    with pytest.raises(ParamsError) as err:
        validate_params(params)
    assert f"\n  {line}" in str(err.value)


def test_both_engines_name_the_broken_plugin_and_the_unregistered_name(tmp_path: Path) -> None:
    """DVC's first stage and the Snakefile's parse (which validates params) give the same messages."""
    repo = make_copy(tmp_path, TINY)
    env, line = broken_plugin(tmp_path, "SKRD4AD_VARIANTS")
    proc = run([str(BIN / "snakemake"), "-n", "--cores", "1"], repo, env)
    assert proc.returncode != 0 and line in (proc.stdout + proc.stderr).splitlines(), proc.stderr[-3000:]

    bad = yaml.safe_load((repo / "params.yaml").read_text())
    bad["model"]["variants"] = ["rd4ad", "toy"]
    (repo / "bad.yaml").write_text(yaml.safe_dump(bad))
    message = f"invalid params: model.variants.1: 'toy' is not one of ['rd4ad', 'skrd4ad', 'rdpp'] (or {VARIANT_HINT})"
    proc = run([sys.executable, "workflow/scripts/validate_params.py", "--params", "bad.yaml", "--out", "ok"], repo, ENV)
    assert proc.returncode == 1 and proc.stderr.rstrip().endswith(f"ERROR skrd4ad.stage.validate_params: {message}")
    proc = run([str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", "bad.yaml"], repo, ENV)
    assert proc.returncode != 0 and message in (proc.stdout + proc.stderr).splitlines(), proc.stderr[-3000:]  # one line


def test_the_hints_name_the_group_the_variable_and_the_readme_section() -> None:
    readme = (REPO / "README.md").read_text()
    for registry, hint in ((variants, VARIANT_HINT), (sources, SOURCE_HINT)):
        assert registry.REGISTER_HINT == hint
        assert f"### {hint.split(chr(39))[1]}" in readme  # the section it names exists
        assert f"(or {hint})" in str(pytest.raises(ValueError, registry.get, "toy").value)
