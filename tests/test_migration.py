"""docs/migration.md's table of defaults that differ: the optax rows, against optax itself (the other peers'
parities are in the golden values of tests/data, made by scripts/make_golden.py)."""

import numpy as np
import optax

import jaxbce

rng = np.random.default_rng(0)
X = rng.normal(scale=3.0, size=(8, 5)).astype(np.float32)
Y = (rng.uniform(size=(8, 5)) < 0.4).astype(np.float32)
M = (rng.uniform(size=(8, 5)) < 0.7).astype(np.float32)


def test_optax_elementwise_is_reduction_none():
    got = jaxbce.binary_cross_entropy_with_logits(X, Y, reduction="none")
    np.testing.assert_allclose(got, optax.sigmoid_binary_cross_entropy(X, Y), rtol=2e-6, atol=1e-7)


def test_optax_masked_mean_is_where():
    expected = (optax.sigmoid_binary_cross_entropy(X, Y) * M).sum() / M.sum()
    np.testing.assert_allclose(jaxbce.binary_cross_entropy_with_logits(X, Y, where=M > 0), expected, rtol=2e-6)


def test_optax_focal_defaults_are_alpha_none_and_no_reduction():
    expected = optax.sigmoid_focal_loss(X, Y)
    np.testing.assert_allclose(jaxbce.sigmoid_focal_loss(X, Y, alpha=None, reduction="none"), expected, rtol=1e-5,
                               atol=1e-7)  # fmt: skip
    # and the trap: the defaults differ by the alpha weighting and the reduction
    assert abs(float(jaxbce.sigmoid_focal_loss(X, Y)) - float(expected.mean())) > 0.05
