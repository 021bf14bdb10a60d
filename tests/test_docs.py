"""The documentation site builds with warnings as errors (mkdocs --strict), API reference included; the contract
page and the README's tables are in step with their sources."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import doc_blocks
import jaxbce

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
    assert readme.count("<!-- generated: ") == len(report.readme_tables()) == 10
    assert report.render_readme(readme, report.readme_tables()) == readme


def test_every_python_block_is_run_by_a_test():
    """doc_blocks.RUNS covers every page with python blocks, and its slices of each page hold all of its blocks."""
    pages = {str(path.relative_to(ROOT)) for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}
    with_blocks = {page for page in pages if doc_blocks.blocks(page)}
    assert with_blocks == set(doc_blocks.RUNS)
    for page, runs in doc_blocks.RUNS.items():
        covered = sum(len(doc_blocks.blocks(page, start, end)) for start, end, _ in runs)
        assert covered == len(doc_blocks.blocks(page)), page


def test_the_readme_blocks_run_as_pasted_and_compute_what_they_say(tmp_path, monkeypatch):
    """The README's blocks in order in one namespace (each fragment after its collapsed setup block), each result
    checked against the direct, materialised computation."""
    monkeypatch.chdir(tmp_path)
    setup, quick_start, fused_setup, fused, update_setup, update, siglip_setup, siglip = doc_blocks.blocks("README.md")
    n: dict = {}
    run = lambda block: exec(compile(block, "README.md", "exec"), n)  # noqa: E731
    run(setup)
    initial = n["params"]
    run(quick_start)
    expected = jaxbce.binary_cross_entropy_with_logits(
        n["model"].apply(initial, n["batch"]["x"]),
        n["batch"]["y"],
        pos_weight=n["class_pos_weight"],
        where=n["batch"]["label_mask"],
    )
    np.testing.assert_allclose(n["loss"], expected, rtol=1e-6)
    assert not np.allclose(n["params"]["params"]["kernel"], initial["params"]["kernel"])

    run(fused_setup)
    run(fused)
    head, positives = n["params"]["head"], n["batch"]["positives"]
    features = n["model"].apply(n["params"]["body"], n["batch"]["x"])
    logits = features @ head["kernel"] + head["bias"]
    labels = (positives[..., None] == jnp.arange(n["CLASSES"])).any(axis=-2)
    expected = jaxbce.binary_cross_entropy_with_logits(logits, labels, reduction="batchmean")
    np.testing.assert_allclose(n["loss"], expected, rtol=2e-6)
    fused_loss = n["loss"]

    run(update_setup)
    run(update)
    np.testing.assert_allclose(n["loss"], fused_loss, rtol=1e-6)  # the same loss, with the head's step fused
    assert not np.allclose(n["head"]["kernel"], head["kernel"])
    body_grads = n["body_grads"]
    assert jax.tree.structure(body_grads) == jax.tree.structure(n["params"]["body"])

    run(siglip_setup)
    run(siglip)
    x, z = n["towers"](n["params"], n["images"], n["texts"])
    scale, bias = jnp.exp(n["params"]["log_scale"]), n["params"]["bias"]
    np.testing.assert_allclose(n["loss"], jaxbce.sigmoid_contrastive_loss(x, z, scale, bias), rtol=2e-6)


def test_the_api_page_blocks_run_as_pasted():
    """docs/api.md: the BCOO block against dense labels, the class-balance block against counting in NumPy."""
    n = doc_blocks.run("docs/api.md")
    dense = jnp.asarray(n["csr"].toarray())
    expected = jaxbce.linear_binary_cross_entropy(n["features"], n["weight"].T, dense)
    # The BCOO block's loss was overwritten by the second block's: rerun its last line.
    bcoo = jaxbce.linear_binary_cross_entropy(n["features"], n["weight"], n["labels"], kernel_layout="out_in")
    np.testing.assert_allclose(bcoo, expected, rtol=1e-6)
    labels = np.concatenate(n["dataset"])
    np.testing.assert_array_equal(n["positives"], (labels == 1).sum(axis=0))
    np.testing.assert_array_equal(n["labelled"], (labels != -1).sum(axis=0))
    expected = jaxbce.binary_cross_entropy_with_logits(
        np.zeros((16, 5), np.float32),
        n["dataset"][0],
        pos_weight=n["pos_weight"],
        ignore_label=-1,
        reduction="batchmean",
    )
    np.testing.assert_allclose(n["loss"], expected, rtol=1e-6)
    # The metrics block: the top 5 of the materialised logits, and P@5 as the hits among them over 5.
    expected_top = jax.lax.top_k(n["head_features"] @ n["head_kernel"], 5)[1]
    np.testing.assert_array_equal(n["top"], expected_top)
    hits = (np.asarray(n["top"])[:, :, None] == np.asarray(n["true_classes"])[:, None, :]).any(axis=-1)
    np.testing.assert_allclose(n["p_at_5"], hits.sum(axis=1).mean() / 5, rtol=1e-6)
    assert 0 < float(n["psp_at_5"]) <= 1


def test_the_errors_page_block_runs_as_pasted(capsys):
    """docs/errors.md: both ways of turning the value checks on report the bad label."""
    n = doc_blocks.run("docs/errors.md")
    expected = "labels must be in [0, 1]; got 2.0 at index [1 1]"
    assert capsys.readouterr().out.startswith(expected)
    assert n["message"].startswith(expected), n["message"]
