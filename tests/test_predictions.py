"""Predictions and metrics without the logits: linear_top_k against jax.lax.top_k of the materialised logits (ties
included), precision@k and nDCG@k against scikit-learn's ndcg_score and the Extreme Classification Repository's
published formulas (written here in NumPy), and propensity_scores against Jain et al.'s formula in float64."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import devices
import jaxbce
from jax_compat import set_mesh

RNG = np.random.default_rng(11)
C = 53  # prime: chunks of 16 leave a partial last one


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
@pytest.mark.parametrize("k", [1, 5, 20, C])
def test_top_k_equals_lax_top_k_with_ties(k, layout):
    """Small integers, so that every logit is exact and many are equal: the same scores and the same indices
    (lax.top_k puts the lower index first), with batch dimensions, a bias and k above the chunk's width."""
    features = RNG.integers(-2, 3, size=(2, 3, 4)).astype(np.float32)
    kernel = RNG.integers(-2, 3, size=(4, C)).astype(np.float32)
    bias = RNG.integers(-1, 2, size=(C,)).astype(np.float32)
    expected = jax.lax.top_k(features @ kernel + bias, k)
    passed = kernel.T if layout == "out_in" else kernel
    got = jaxbce.linear_top_k(features, passed, k, bias=bias, chunk_size=16, kernel_layout=layout)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[1].dtype == jnp.int32


def test_top_k_of_real_valued_logits_and_the_default_chunk():
    features = RNG.normal(size=(7, 12)).astype(np.float32)
    kernel = RNG.normal(size=(12, 1009)).astype(np.float32)
    expected = jax.lax.top_k(features @ kernel, 10)
    scores, indices = jaxbce.linear_top_k(features, kernel, 10)
    np.testing.assert_allclose(scores, expected[0], rtol=1e-6)
    np.testing.assert_array_equal(indices, expected[1])


@devices.eight_devices
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_top_k_sharded_over_classes_equals_one_device(axis_type):
    features = RNG.integers(-2, 3, size=(8, 4)).astype(np.float32)
    kernel = RNG.integers(-2, 3, size=(4, 54)).astype(np.float32)  # 54 classes: 2 class shards of 27
    expected = jax.lax.top_k(features @ kernel, 7)
    mesh = devices.mesh(axis_type)
    sharded = (
        jax.device_put(features, NamedSharding(mesh, P("data"))),
        jax.device_put(kernel, NamedSharding(mesh, P(None, "model"))),
    )
    with set_mesh(mesh):
        scores, indices = jax.jit(lambda f, w: jaxbce.linear_top_k(f, w, 7, chunk_size=10))(*sharded)
    np.testing.assert_array_equal(scores, expected[0])
    np.testing.assert_array_equal(indices, expected[1])


def test_top_k_errors():
    with pytest.raises(ValueError, match=r"k must be an int in \[1, C\] = \[1, 3\], got 4"):
        jaxbce.linear_top_k(np.ones((2, 2), np.float32), np.ones((2, 3), np.float32), 4)
    with pytest.raises(ValueError, match="kernel"):
        jaxbce.linear_top_k(np.ones((2, 2), np.float32), np.ones((3, 3), np.float32), 1)


def _labels_and_ranking(batch=40, classes=30):
    labels = RNG.uniform(size=(batch, classes)) < 0.15
    labels[0] = False  # an example without labels
    scores = RNG.normal(size=(batch, classes))  # distinct: no ties for scikit-learn to average
    order = np.argsort(-scores, axis=-1)
    return labels, scores, order


def _positives(labels):
    width = max(1, int(labels.sum(axis=1).max()))
    positives = np.full((labels.shape[0], width + 1), -1, np.int32)
    for row, classes in enumerate(labels):
        found = np.flatnonzero(classes)
        positives[row, : len(found)] = found
        if len(found):
            positives[row, -1] = found[0]  # a repeated class counts once
    return positives


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_and_ndcg_against_scikit_learn_and_the_formulas(k):
    """nDCG@k: scikit-learn's ndcg_score per example (binary relevance, distinct scores: its definition and the
    repository's agree; scikit-learn gives 0 to an example without labels, as the repository's tools do).
    P@k: the repository's (1/k) sum of the labels of the top k."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels, scores, order = _labels_and_ranking()
    top = order[:, :k].astype(np.int32)
    expected_ndcg = [sklearn_metrics.ndcg_score(y[None], s[None], k=k) for y, s in zip(labels, scores, strict=True)]
    expected_precision = np.take_along_axis(labels, top, axis=1).sum(axis=1) / k
    for targets in ({"labels": labels}, {"positives": _positives(labels)}):
        np.testing.assert_allclose(jaxbce.ndcg_at_k(order, **targets, k=k), expected_ndcg, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(jaxbce.precision_at_k(order, **targets, k=k), expected_precision, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_propensity_scored_metrics_against_the_published_formulas(k):
    """PSP@k and PSnDCG@k as the Extreme Classification Repository defines them (Jain et al. 2016): per-example
    numerators here, normalised over the data set by the same metric of the ideal ranking (each example's true
    labels by 1 / p descending)."""
    labels, _, order = _labels_and_ranking()
    counts = labels.sum(axis=0)
    propensities = np.asarray(jaxbce.propensity_scores(counts.astype(np.float32), labels.shape[0]), np.float64)
    gain = labels / propensities
    top = order[:, :k]
    discounts = 1 / np.log2(np.arange(2, k + 2))
    psp = np.take_along_axis(gain, top, axis=1).sum(axis=1) / k
    counts_per_example = labels.sum(axis=1)
    ideal_dcg = np.array([discounts[: min(k, n)].sum() for n in counts_per_example])
    dcg = (np.take_along_axis(gain, top, axis=1) * discounts).sum(axis=1)
    psndcg = np.where(counts_per_example > 0, dcg / np.where(ideal_dcg > 0, ideal_dcg, 1), 0)
    got_psp = jaxbce.precision_at_k(order, labels, k=k, propensities=propensities.astype(np.float32))
    got_psndcg = jaxbce.ndcg_at_k(order, labels, k=k, propensities=propensities.astype(np.float32))
    np.testing.assert_allclose(got_psp, psp, rtol=1e-5)
    np.testing.assert_allclose(got_psndcg, psndcg, rtol=1e-5, atol=1e-7)
    # The data-set normalisation that docs/api.md shows: the ideal ranking by gain.
    ideal = np.argsort(-gain, axis=1, kind="stable")
    normalised = got_psp.mean() / jaxbce.precision_at_k(ideal, labels, k=k, propensities=propensities).mean()
    assert 0 < normalised <= 1


def test_metrics_mask_examples():
    labels, _, order = _labels_and_ranking()
    where = np.arange(labels.shape[0]) % 2 == 0
    got = jaxbce.precision_at_k(order, labels, k=3, where=where)
    np.testing.assert_array_equal(np.asarray(got)[~where], 0)
    np.testing.assert_allclose(np.asarray(got)[where], np.asarray(jaxbce.precision_at_k(order, labels, k=3))[where])


def test_propensity_scores_are_the_published_formula():
    """Jain et al. (KDD 2016), eq. for p_l, in float64 NumPy; the paper's Amazon parameters too."""
    counts = np.array([0, 1, 5, 100, 10_000], np.float64)
    for n, a, b in ((50_000, 0.55, 1.5), (490_449, 0.6, 2.6)):
        c = (math.log(n) - 1) * (b + 1) ** a
        expected = 1 / (1 + c * np.exp(-a * np.log(counts + b)))
        got = jaxbce.propensity_scores(counts.astype(np.float32), n, a=a, b=b)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_metric_errors():
    with pytest.raises(ValueError, match="k must be an int"):
        jaxbce.precision_at_k(np.zeros((2, 3), np.int32), np.zeros((2, 5)), k=4)
    with pytest.raises(ValueError, match="exactly one of labels"):
        jaxbce.ndcg_at_k(np.zeros((2, 3), np.int32), k=1)
