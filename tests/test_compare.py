"""skrd4ad.compare and ``skrd4ad compare``: hand-made results trees with known differences, read
from directories, git revisions and dvc experiment refs."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from skrd4ad.cli import main
from skrd4ad.compare import CompareError, compare, format_markdown, format_text, to_json

CLASSES = ["brick", "grass", "gravel"]
SEEDS = [1, 2]
# rd4ad pixel_auroc of A per (class, seed): mean 0.85
A_PIX = {("brick", 1): 0.80, ("brick", 2): 0.82, ("grass", 1): 0.84, ("grass", 2): 0.86,
         ("gravel", 1): 0.88, ("gravel", 2): 0.90}
SIGN = {("brick", 1): 1, ("brick", 2): -1, ("grass", 1): 1, ("grass", 2): -1, ("gravel", 1): 1, ("gravel", 2): -1}


def _write(root: Path, variant: str, cls: str, seed: int, metrics: dict, name: str = "synthetic") -> None:
    path = root / name / "eval" / variant / f"seed{seed}" / cls / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def make_tree(root: Path, side: str, classes=CLASSES, seeds=SEEDS) -> Path:
    """side "A" or "B".  Known B − A: rd4ad pixel_auroc +0.01 everywhere; rd4ad image_auroc ±0.02
    (mean 0); skrd4ad pixel_auroc −0.03 everywhere; skrd4ad image_auroc identical."""
    b = side == "B"
    for cls in classes:
        for seed in seeds:
            key = (cls, seed)
            _write(root, "rd4ad", cls, seed, {
                "pixel_auroc": A_PIX[key] + (0.01 if b else 0.0),
                "image_auroc": 0.7 + (0.02 * SIGN[key] if b else 0.0),
                "provenance": {"git": "abc", "n_test": 60}, "dirty": True, "note": "text"})
            _write(root, "skrd4ad", cls, seed, {
                "pixel_auroc": 0.9 - (0.03 if b else 0.0), "image_auroc": 0.75})
    return root


def rows_by_key(result):
    return {(r.variant, r.metric): r for r in result.rows}


@pytest.fixture
def trees(tmp_path):
    a = make_tree(tmp_path / "A" / "results", "A")
    b = make_tree(tmp_path / "B" / "results", "B")
    _write(a, "rd4ad", "brick", 3, {"pixel_auroc": 0.1, "image_auroc": 0.1})  # only in A
    return a, b


def test_directories_known_differences(trees):
    a, b = trees
    result = compare(str(a), str(b))
    rows = rows_by_key(result)
    assert set(rows) == {(v, m) for v in ("rd4ad", "skrd4ad") for m in ("image_auroc", "pixel_auroc")}
    assert result.n_shared_jobs == 12

    pix = rows[("rd4ad", "pixel_auroc")]
    assert pix.name == "synthetic"
    assert pix.mean_a == pytest.approx(0.85) and pix.mean_b == pytest.approx(0.86)  # seed 3 not in the mean
    assert pix.diff.mean == pytest.approx(0.01)
    assert (pix.diff.n_pairs, pix.diff.n_positive, pix.diff.n_negative) == (6, 6, 0)
    assert pix.diff.ci_low == pytest.approx(0.01) and pix.diff.ci_high == pytest.approx(0.01)
    assert pix.diff.verdict().startswith("B higher")

    img = rows[("rd4ad", "image_auroc")]
    assert img.diff.mean == pytest.approx(0.0, abs=1e-12)
    assert (img.diff.n_positive, img.diff.n_negative) == (3, 3)
    assert "no detectable difference" in img.diff.verdict()

    sk = rows[("skrd4ad", "pixel_auroc")]
    assert sk.diff.mean == pytest.approx(-0.03) and sk.diff.verdict().startswith("B lower")
    same = rows[("skrd4ad", "image_auroc")]
    assert (same.diff.mean, same.diff.n_zero, same.diff.ci_low, same.diff.ci_high) == (0.0, 6, 0.0, 0.0)

    assert any("1 job(s) only in A" in n and "seed3/brick" in n for n in result.notes)
    text = format_text(result)
    assert "+1.00" in text and "-3.00" in text and "85.00" in text and "86.00" in text
    assert "provenance" not in text and "dirty" not in text and "note:" in text
    assert text.strip().splitlines()[-1].startswith("4 metric row(s) over 12 shared job(s)")
    md = format_markdown(result)
    assert md.count("| synthetic |") == 4


def test_results_name_directory_and_filters(trees):
    a, b = trees
    result = compare(str(a / "synthetic"), str(b / "synthetic"), variants=["rd4ad"], metrics=["pixel_*"])
    assert [(r.name, r.variant, r.metric) for r in result.rows] == [("synthetic", "rd4ad", "pixel_auroc")]
    assert result.rows[0].diff.mean == pytest.approx(0.01)


def test_too_few_pairs(tmp_path):
    a = make_tree(tmp_path / "A", "A", classes=["brick"], seeds=[1, 2])
    b = make_tree(tmp_path / "B", "B", classes=["brick"], seeds=[1, 2])
    result = compare(str(a), str(b))
    for row in result.rows:
        assert row.diff.n_pairs == 2 and row.diff.ci_low is None and row.diff.ci_high is None
        assert row.diff.verdict() == "too few pairs for an interval (2 < 6)"
    assert "too few pairs: 4" in format_text(result)
    assert all(r["ci_low"] is None for r in to_json(result)["rows"])


def test_no_shared_job_says_what_each_side_has(tmp_path):
    a = make_tree(tmp_path / "A", "A", seeds=[1])
    b = make_tree(tmp_path / "B", "B", seeds=[2])
    with pytest.raises(CompareError, match=r"no job in both sides.*seed\(s\) 1.*seed\(s\) 2"):
        compare(str(a), str(b))


def test_non_finite_pairs_dropped_with_note(tmp_path):
    a = make_tree(tmp_path / "A", "A")
    b = make_tree(tmp_path / "B", "B")
    _write(b, "rd4ad", "brick", 1, {"pixel_auroc": float("nan"), "image_auroc": 0.72})
    result = compare(str(a), str(b), variants=["rd4ad"], metrics=["pixel_auroc"])
    assert result.rows[0].diff.n_pairs == 5
    assert any("1 pair(s) with NaN/inf dropped" in n for n in result.notes)


# ---------------------------------------------------------------- git and dvc exp sources

@pytest.fixture
def git_env(monkeypatch):
    for k, v in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                 "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull,
                 "GIT_CONFIG_NOSYSTEM": "1"}.items():
        monkeypatch.setenv(k, v)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, git_env, monkeypatch):
    """Commit 1: tree A; commit 2: tree B; plus an unrelated file outside results/."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    make_tree(repo / "results", "A")
    (repo / "README").write_text("x")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "A")
    make_tree(repo / "results", "B")
    _git(repo, "commit", "-q", "-am", "B")
    monkeypatch.chdir(tmp_path)  # git sources are read from --repo, not the cwd
    return repo


def test_git_revisions(repo):
    result = compare("HEAD~1", "HEAD", repo=repo)
    rows = rows_by_key(result)
    assert rows[("rd4ad", "pixel_auroc")].diff.mean == pytest.approx(0.01)
    assert rows[("skrd4ad", "pixel_auroc")].diff.mean == pytest.approx(-0.03)
    assert result.n_shared_jobs == 12 and not result.notes
    assert result.a.startswith("HEAD~1 (git ") and "provenance" not in format_text(result)


def test_git_revision_against_directory(repo):
    _write(repo / "results", "rd4ad", "brick", 1, {"pixel_auroc": 0.5, "image_auroc": 0.7})  # uncommitted
    result = compare("HEAD", str(repo / "results"), repo=repo, variants=["rd4ad"], metrics=["pixel_auroc"])
    assert result.rows[0].diff.mean == pytest.approx((0.5 - 0.81) / 6)


def test_dvc_exp_name(repo):
    first = _git(repo, "rev-parse", "HEAD~1")
    _git(repo, "update-ref", "refs/exps/ab/cdef/my-exp", first)
    _git(repo, "update-ref", "refs/exps/ab/cdef/my-exp-2", "HEAD")  # a longer name must not match
    result = compare("my-exp", "HEAD", repo=repo)
    assert rows_by_key(result)[("rd4ad", "pixel_auroc")].diff.mean == pytest.approx(0.01)
    assert "refs/exps/ab/cdef/my-exp" in result.a and first[:10] in result.a

    _git(repo, "update-ref", "refs/exps/12/3456/my-exp", first)
    with pytest.raises(CompareError, match="ambiguous.*refs/exps/12/3456/my-exp.*refs/exps/ab/cdef/my-exp"):
        compare("my-exp", "HEAD", repo=repo)


# ---------------------------------------------------------------- CLI

def test_cli_json(trees, capsys):
    a, b = trees
    assert main(["compare", str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert str(a) in out["a"] and str(b) in out["b"]
    row = next(r for r in out["rows"] if (r["variant"], r["metric"]) == ("rd4ad", "pixel_auroc"))
    assert row["diff"] == pytest.approx(0.01) and row["n_pairs"] == 6 and row["n_positive"] == 6
    assert len(out["rows"]) == 4 and out["notes"]


def test_cli_markdown_with_filters(trees, capsys):
    a, b = trees
    assert main(["compare", str(a), str(b), "--md", "--variant", "skrd4ad", "--metric", "pixel_auroc,image_auroc"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| synthetic |")]
    assert [line.split(" | ")[2] for line in table] == ["image_auroc", "pixel_auroc"]


def test_cli_bad_argument(tmp_path, git_env, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    b = make_tree(tmp_path / "B", "B")
    assert main(["compare", "no-such-thing", str(b), "--repo", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-thing" in err[0]
    assert "results directory" in err[0] and "git revision" in err[0] and "dvc exp" in err[0]


# ---------------------------------------------------------------- two variants of one run, faults

def test_two_variants_within_one_run(tmp_path, capsys):
    """Tree A: skrd4ad pixel_auroc 0.90 everywhere, rd4ad 0.80..0.90 (mean 0.85): skrd4ad − rd4ad
    = +0.05 on average; pairs differ by 0.10, 0.08, ..., 0.00 (5 positive, one zero), and every
    class (rd4ad means 0.81, 0.85, 0.89) favours skrd4ad."""
    a = make_tree(tmp_path / "A", "A")
    from skrd4ad.compare import compare_variants

    result = compare_variants(str(a), "rd4ad", "skrd4ad", metrics=["pixel_auroc"])
    (row,) = result.rows
    assert (row.name, row.variant, row.metric) == ("synthetic", "skrd4ad-rd4ad", "pixel_auroc")
    assert row.mean_a == pytest.approx(0.85) and row.mean_b == pytest.approx(0.90)
    assert row.diff.mean == pytest.approx(0.05) and row.diff.n_pairs == 6
    assert (row.diff.classes_positive, row.diff.n_classes) == (3, 3)
    assert (row.diff.n_positive, row.diff.n_negative, row.diff.n_zero) == (5, 0, 1)
    assert result.a.endswith("variant rd4ad") and result.b.endswith("variant skrd4ad")

    assert main(["compare", str(a), "--contrast", "rd4ad,skrd4ad", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["metric"] for r in out["rows"]} == {"pixel_auroc", "image_auroc"}
    assert all(r["variant"] == "skrd4ad-rd4ad" for r in out["rows"])


@pytest.mark.parametrize("argv, message", [
    (["{A}", "{A}", "--contrast", "rd4ad,skrd4ad"], "--contrast takes two variants of ONE source"),
    (["{A}", "--contrast", "rd4ad"], "--contrast takes two variants"),
    (["{A}", "--contrast", "rd4ad,skrd4ad", "--variant", "rd4ad"], "no second source, no --variant"),
    (["{A}"], "give two sources"),
])
def test_contrast_usage_errors(tmp_path, capsys, argv, message):
    a = make_tree(tmp_path / "A", "A")
    assert main(["compare", *[str(a) if x == "{A}" else x for x in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_contrast_names_a_missing_variant(tmp_path, capsys):
    a = make_tree(tmp_path / "A", "A")
    assert main(["compare", str(a), "--contrast", "rd4ad,wide"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no job of variant 'wide'" in err and "variants there: rd4ad, skrd4ad" in err


def test_one_seed_per_class_counts_classes(tmp_path):
    a = make_tree(tmp_path / "A", "A", seeds=[1])
    b = make_tree(tmp_path / "B", "B", seeds=[1])
    result = compare(str(a), str(b), variants=["rd4ad"], metrics=["image_auroc"])
    # image_auroc B − A at seed 1 is +0.02 for every class
    assert result.rows[0].diff.verdict() == "one seed per class: no interval; 3 of 3 classes favour B"
    assert "one seed per class: 1" in format_text(result)


def test_non_numeric_metric_is_an_error_naming_file_and_key(tmp_path, capsys):
    a = make_tree(tmp_path / "A", "A")
    b = make_tree(tmp_path / "B", "B")
    bad = b / "synthetic/eval/rd4ad/seed2/grass/metrics.json"
    bad.write_text(json.dumps({"pixel_auroc": "0.87", "image_auroc": 0.72}))
    assert main(["compare", str(a), str(b)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "pixel_auroc = '0.87' is not a number" in err[0]


def test_holm_family_is_the_metrics_of_one_variant(trees):
    """rd4ad has two metrics (image_auroc, pixel_auroc): the constant +0.01 pixel difference has
    bootstrap p = 2 / 10001, Holm-adjusted over that family of 2."""
    a, b = trees
    pix = rows_by_key(compare(str(a), str(b)))[("rd4ad", "pixel_auroc")].diff
    assert pix.p_value == pytest.approx(2 / 10001) and pix.family == 2
    assert pix.p_holm == pytest.approx(4 / 10001)
    assert "Holm p = 0.0004 over 2 metrics" in pix.verdict()


def test_contrast_lists_the_variants_of_the_selected_names(tmp_path, capsys):
    """--name narrows what the message lists: the other dataset's variants are not offered."""
    a = make_tree(tmp_path / "A", "A")
    _write(a, "rdpp", "brick", 1, {"image_auroc": 0.5}, name="other")
    assert main(["compare", str(a), "--contrast", "rd4ad,rdpp", "--name", "synthetic"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no job of variant 'rdpp'" in err and "variants there with --name synthetic: rd4ad, skrd4ad" in err


def test_only_the_tables_quality_metrics_are_judged(tmp_path):
    """A score threshold and a per-defect AUROC (equal to the image AUROC with one defect type) are
    not judged and not in the Holm family: compare's verdicts are the table's."""
    from skrd4ad.stats import JUDGED_METRICS

    a = make_tree(tmp_path / "A", "A")
    b = make_tree(tmp_path / "B", "B")
    for root, shift in ((a, 0.0), (b, 0.5)):
        for f in root.glob("synthetic/eval/*/seed*/*/metrics.json"):
            m = json.loads(f.read_text())
            m |= {"image_f1_threshold": 1.5 + shift, "image_auroc_defect": m["image_auroc"]}
            f.write_text(json.dumps(m))
    result = compare(str(a), str(b))
    assert {r.metric for r in result.rows} == {"image_auroc", "pixel_auroc"} <= set(JUDGED_METRICS)
    assert all(r.diff.family == 2 for r in result.rows)
    with pytest.raises(CompareError, match="compare judges the quality metrics image_auroc, pixel_auroc"):
        compare(str(a), str(b), metrics=["image_f1_threshold"])


def test_one_rounding_rule_for_compare_and_the_table():
    """A mean of 0.75875 summed in another order is 0.7587499999999999: Python's format prints
    75.87 where the exact value rounds to 75.88; the shared rule prints 75.88 on both paths."""
    from skrd4ad.aggregate import _fmt
    from skrd4ad.stats import points

    noisy = 0.7587499999999999
    assert f"{100 * noisy:.2f}" == "75.87"  # the old rule
    assert points(noisy) == points(0.75875) == "75.88" == _fmt(noisy, 0.0, 1, False)
    assert points(-0.0001234, signed=True) == "-0.01" and points(0.004999999999, signed=True) == "+0.50"
