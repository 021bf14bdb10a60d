"""The shared pipeline, exercised through binary_cross_entropy_with_logits: checks, reductions, masks, dtypes.

References are float64 NumPy computations of the same formula (np.logaddexp for softplus).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxbce
from jax_compat import enable_x64
from jaxbce import binary_cross_entropy_with_logits as bce

RNG = np.random.default_rng(42)
X = RNG.normal(scale=4.0, size=(5, 3)).astype(np.float32)
Y = RNG.uniform(size=(5, 3)).astype(np.float32)
W = RNG.uniform(0.1, 2.0, size=(5, 3)).astype(np.float32)
PW = np.array([0.5, 2.0, 4.0], np.float32)
MASK = RNG.uniform(size=(5, 3)) > 0.3


def numpy_loss(x, y, weight=1.0, pos_weight=1.0, label_smoothing=0.0):
    """float64 reference: pw*y*softplus(-x) + (1-y)*softplus(x), times weight."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    y = y * (1 - label_smoothing) + label_smoothing / 2
    return weight * (pos_weight * y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x))


class ReductionTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True, with_device=True, with_pmap=True)
    @parameterized.named_parameters(
        ("none", "none", None),
        ("sum", "sum", None),
        ("mean", "mean", None),
        ("weighted_mean", "weighted_mean", None),
        ("mean_last_axis", "mean", -1),
        ("sum_first_axis", "sum", 0),
        ("weighted_mean_tuple", "weighted_mean", (0, 1)),
    )
    def test_reductions_with_weight_pos_weight_and_mask(self, reduction, axis):
        @self.variant
        def loss(x, y, w, pw, mask):
            return bce(x, y, weight=w, pos_weight=pw, where=mask, reduction=reduction, axis=axis)

        got = loss(X, Y, W, PW, MASK)
        elementwise = np.where(MASK, numpy_loss(X, Y, W, PW), 0.0)
        axes = (0, 1) if axis is None else axis
        if reduction == "none":
            expected = elementwise
        elif reduction == "sum":
            expected = elementwise.sum(axis=axes)
        elif reduction == "mean":
            expected = elementwise.sum(axis=axes) / MASK.sum(axis=axes)
        else:
            expected = elementwise.sum(axis=axes) / np.where(MASK, W, 0).sum(axis=axes)
        np.testing.assert_allclose(got, expected, rtol=2e-6)

    @chex.variants(with_jit=True, without_jit=True, with_device=True)
    def test_mean_counts_kept_elements_not_weights(self):
        loss = self.variant(lambda x, y, w: bce(x, y, weight=w, where=MASK))
        expected = np.where(MASK, numpy_loss(X, Y, W), 0).sum() / MASK.sum()
        np.testing.assert_allclose(loss(X, Y, W), expected, rtol=2e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("mean", "weighted_mean", "sum")
    def test_all_masked_is_zero_with_zero_gradient(self, reduction):
        nothing = np.zeros((5, 3), bool)
        loss = self.variant(lambda x, y, w: bce(x, y, weight=w, pos_weight=PW, where=nothing, reduction=reduction))
        self.assertEqual(loss(X, Y, W), 0.0)
        grads = jax.grad(loss, argnums=(0, 1, 2))(X, Y, W)
        for grad in grads:
            np.testing.assert_array_equal(grad, np.zeros_like(grad))

    def test_zero_total_weight_gives_zero_weighted_mean(self):
        zero = np.zeros((5, 3), np.float32)
        self.assertEqual(bce(X, Y, weight=zero, reduction="weighted_mean"), 0.0)
        np.testing.assert_array_equal(
            jax.grad(lambda x: bce(x, Y, weight=zero, reduction="weighted_mean"))(X), np.zeros_like(X)
        )

    @parameterized.parameters("none", "sum", "mean", "weighted_mean")
    def test_empty_input(self, reduction):
        empty = np.zeros((0, 3), np.float32)
        out = bce(empty, empty, reduction=reduction)
        self.assertEqual(out.shape, (0, 3) if reduction == "none" else ())
        if reduction != "none":
            self.assertEqual(out, 0.0)

    def test_weighted_mean_without_weight_is_mean(self):
        np.testing.assert_array_equal(bce(X, Y, reduction="weighted_mean"), bce(X, Y, reduction="mean"))

    def test_label_smoothing_is_the_keras_rule(self):
        np.testing.assert_allclose(
            bce(X, Y, label_smoothing=0.2, reduction="none"), numpy_loss(X, Y, label_smoothing=0.2), rtol=2e-6
        )


class MaskingTest(chex.TestCase):
    def test_masked_elements_are_zero_with_reduction_none(self):
        out = bce(np.where(MASK, X, np.nan), Y, where=MASK, reduction="none")
        np.testing.assert_array_equal(np.asarray(out)[~MASK], 0.0)

    def test_forward_mode_under_mask(self):
        dirty_x = np.where(MASK, X, np.inf).astype(np.float32)
        tangent = jax.jvp(lambda x: bce(x, Y, where=MASK), (dirty_x,), (np.ones_like(X),))[1]
        expected = jax.jvp(lambda x: bce(x, Y, where=MASK), (X,), (np.where(MASK, 1.0, 0.0).astype(np.float32),))[1]
        np.testing.assert_allclose(tangent, expected, rtol=1e-6)

    def test_zero_weight_removes_an_infinite_loss(self):
        x = jnp.array([jnp.inf, 1.0])
        y = jnp.array([0.0, 1.0])
        w = jnp.array([0.0, 1.0])
        value, grad = jax.value_and_grad(lambda x: bce(x, y, weight=w, reduction="sum"))(x)
        np.testing.assert_allclose(value, np.log1p(np.exp(-1.0)), rtol=1e-6)
        self.assertFalse(np.isnan(grad).any())


class DtypeTest(parameterized.TestCase):
    @parameterized.parameters(jnp.float16, jnp.bfloat16)
    def test_half_precision_is_computed_in_float32(self, dtype):
        x, y = X.astype(dtype), Y.astype(dtype)
        for reduction in ("none", "mean"):
            out = bce(x, y, reduction=reduction)
            self.assertEqual(out.dtype, dtype)
            in_float32 = bce(x.astype(np.float32), y.astype(np.float32), reduction=reduction)
            np.testing.assert_array_equal(out, in_float32.astype(dtype))
        grad = jax.grad(bce)(x, y)
        self.assertEqual(grad.dtype, dtype)

    @parameterized.parameters(np.bool_, np.int32, np.uint8, np.int8, jnp.bfloat16, np.float32)
    def test_label_dtypes_agree(self, label_dtype):
        hard = (Y > 0.5).astype(label_dtype)
        expected = bce(X, (Y > 0.5).astype(np.float32), reduction="none")
        np.testing.assert_array_equal(bce(X, hard, reduction="none"), expected)

    def test_float64_under_x64(self):
        with enable_x64(True):
            x, y = X.astype(np.float64), Y.astype(np.float64)
            out = bce(x, y, reduction="none")
            self.assertEqual(out.dtype, np.float64)
            np.testing.assert_allclose(out, numpy_loss(x, y), rtol=1e-15)
            self.assertEqual(bce(x, y).dtype, np.float64)


class ErrorTest(parameterized.TestCase):
    @parameterized.named_parameters(
        (
            "labels_4_1_with_4",
            dict(logits=np.zeros((4, 1)), labels=np.zeros(4)),
            ValueError,
            r"\(4,\).*\(4, 1\)",
        ),
        ("labels_bigger", dict(logits=np.zeros(4), labels=np.zeros((4, 4))), ValueError, "labels"),
        ("weight", dict(weight=np.ones(4)), ValueError, r"weight of shape \(4,\).*\(5, 3\)"),
        ("pos_weight", dict(pos_weight=np.ones(5)), ValueError, r"pos_weight of shape \(5,\)"),
        ("pos_weight_more_dims", dict(pos_weight=np.ones((2, 5, 3))), ValueError, "pos_weight"),
        ("where", dict(where=np.ones((3, 5), bool)), ValueError, r"where of shape \(3, 5\)"),
        ("where_dtype", dict(where=np.ones((5, 3))), TypeError, "where must be a bool"),
        (
            "logits_int",
            dict(logits=np.zeros((5, 3), np.int32)),
            TypeError,
            "logits must have a real floating",
        ),
        ("logits_complex", dict(logits=np.zeros((5, 3), np.complex64)), TypeError, "logits"),
        ("labels_complex", dict(labels=np.zeros((5, 3), np.complex64)), TypeError, "labels must have"),
        ("weight_complex", dict(weight=np.zeros(3, np.complex64)), TypeError, "weight must have"),
        (
            "reduction",
            dict(reduction="avg"),
            ValueError,
            "'none', 'sum', 'mean', 'weighted_mean', 'batchmean'; got 'avg'",
        ),
        ("axis_range", dict(axis=2), ValueError, "axis 2 is out of bounds"),
        ("axis_repeat", dict(axis=(0, -2)), ValueError, "repeats"),
        ("axis_type", dict(axis=1.0), TypeError, "axis must be"),
        ("axis_with_none", dict(axis=0, reduction="none"), ValueError, "cannot be combined with reduction='none'"),
        ("axis_with_batchmean", dict(axis=0, reduction="batchmean"), ValueError, "cannot be combined"),
        ("ignore_label_type", dict(ignore_label="-1"), TypeError, "ignore_label must be"),
        ("poly_epsilon_type", dict(poly_epsilon=float("nan")), TypeError, "poly_epsilon must be a finite"),
        ("smoothing_range", dict(label_smoothing=1.5), ValueError, "label_smoothing must be in"),
        ("smoothing_type", dict(label_smoothing="0.1"), TypeError, "label_smoothing"),
    )
    def test_bad_arguments_raise_at_trace_time(self, overrides, error, message):
        kwargs = dict(overrides)
        logits, labels = kwargs.pop("logits", X), kwargs.pop("labels", Y)
        with pytest.raises(error, match=message):
            bce(logits, labels, **kwargs)
        with pytest.raises(error, match=message):  # raised while tracing: nothing is run
            jax.eval_shape(lambda: bce(logits, labels, **kwargs))


class TransformationTest(chex.TestCase):
    def test_vmap_equals_per_example_loop(self):
        per_example = jax.vmap(lambda x, y, m: bce(x, y, pos_weight=PW, where=m))(X, Y, MASK)
        loop = [bce(X[i], Y[i], pos_weight=PW, where=MASK[i]) for i in range(len(X))]
        np.testing.assert_allclose(per_example, loop, rtol=1e-6)
        np.testing.assert_allclose(per_example, bce(X, Y, pos_weight=PW, where=MASK, axis=-1), rtol=1e-6)

    def test_vmap_of_gradient_equals_loop(self):
        grads = jax.vmap(jax.grad(lambda x, y: bce(x, y, pos_weight=PW)))(X, Y)
        loop = [jax.grad(lambda x, y: bce(x, y, pos_weight=PW))(X[i], Y[i]) for i in range(len(X))]
        np.testing.assert_allclose(grads, np.stack(loop), rtol=1e-6)

    def test_public_api(self):
        self.assertIn("binary_cross_entropy_with_logits", jaxbce.__all__)
