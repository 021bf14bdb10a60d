"""The documentation site builds with warnings as errors (mkdocs --strict), API reference included; the contract
page and the README's tables are in step with their sources."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    api = (tmp_path / "api" / "index.html").read_text()
    for name in (
        "binary_cross_entropy_with_logits",
        "sigmoid_focal_loss",
        "binary_kl_divergence",
        "checked",
        "linear_binary_cross_entropy",
        "pos_weight_from_counts",
        "class_balanced_weights",
    ):
        assert name in api


def test_contract_page_is_in_step_with_the_specification():
    """docs/contract.md carries the specification's text (its title aside); checked wherever the specification
    sits beside the checkout, as it does for the developers and CI."""
    spec = ROOT.parent / "shared" / "spec" / "API.md"
    if not spec.exists():
        pytest.skip("no shared/spec/API.md beside this checkout to compare with")
    page = (ROOT / "docs" / "contract.md").read_text().splitlines()[1:]
    assert page == spec.read_text().splitlines()[1:]


def test_readme_tables_are_generated_from_the_committed_results():
    """The README's tables are bench/report.py's rendering of bench/results (run `python bench/report.py`)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import report
    finally:
        sys.path.remove(str(ROOT / "bench"))
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- generated: ") == len(report.readme_tables()) == 9
    assert report.render_readme(readme, report.readme_tables()) == readme
