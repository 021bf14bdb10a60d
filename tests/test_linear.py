"""linear_binary_cross_entropy: the BCE of ``features @ kernel + bias`` without the logits.

References: the materialised ``binary_cross_entropy_with_logits(features @ kernel + bias, labels)`` (the
contract's definition, to float32 summation-order rounding), and an independent float64 NumPy evaluation of
the loss and of its analytic gradient ``(pw y + 1 - y) sigmoid(z) - pw y``.
"""

import functools
import pathlib
import re
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.experimental import checkify
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import devices
import jaxbce
import reference
from jax_compat import enable_x64, set_mesh
from reference import linear_bce

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH, DIM, CLASSES = 12, 7, 45  # 45 classes: chunk sizes that divide it (9, 15) and that do not (8, 16)


def _problem(seed=0, classes=CLASSES):
    rng = np.random.default_rng(seed)
    return {
        "features": rng.normal(size=(BATCH, DIM)).astype(np.float32),
        "kernel": (rng.normal(size=(DIM, classes)) / 2).astype(np.float32),
        "bias": rng.normal(size=(classes,)).astype(np.float32),
        "pos_weight": rng.uniform(0.5, 3.0, size=(classes,)).astype(np.float32),
        "weight": rng.uniform(0.0, 2.0, size=(BATCH, 1)).astype(np.float32),  # per example
        "where": rng.uniform(size=(BATCH,)) > 0.25,
        "labels": rng.uniform(size=(BATCH, classes)) < 0.3,
        # repeats (3, 3), padding (-1) between and after entries, a row of padding only, the last class
        "positives": np.array(
            [[0, 3, 3, -1], [5, -1, 7, -1], [classes - 1, 0, 1, 2], [-1, -1, -1, -1], [10, 11, 12, 13],
             [1, 1, 1, 1], [44, 43, -1, -1], [20, -1, -1, -1], [8, 9, -1, -1], [2, 2, -1, 30], [6, -1, -1, -1],
             [15, 16, 17, 18]], np.int32),
    }  # fmt: skip


def _dense(positives, classes=CLASSES):
    dense = np.zeros((positives.shape[0], classes), bool)
    for row, indices in enumerate(positives):
        dense[row, indices[indices >= 0]] = True
    return dense


def _fused_and_materialised(p, *, sparse, reduction, chunk_size, use_pos_weight, use_weight, use_where,
                            label_smoothing=0.0, pos_weight_scalar=False):  # fmt: skip
    labels = _dense(p["positives"]) if sparse else p["labels"]
    pos_weight = None
    if use_pos_weight:
        pos_weight = np.float32(2.5) if pos_weight_scalar else p["pos_weight"]
    where = p["where"] if use_where else None

    def fused(features, kernel, bias, pos_weight, weight):
        target = {"positives": p["positives"]} if sparse else {"labels": labels}
        out = jaxbce.linear_binary_cross_entropy(
            features, kernel, **target, bias=bias, pos_weight=pos_weight, weight=weight, where=where,
            label_smoothing=label_smoothing, reduction=reduction, chunk_size=chunk_size,
        )  # fmt: skip
        return out.sum() if reduction == "none" else out

    def materialised(features, kernel, bias, pos_weight, weight):
        out = linear_bce(features, kernel, bias, pos_weight, weight, labels=labels, where=where,
                         reduction=reduction, label_smoothing=label_smoothing)  # fmt: skip
        return out.sum() if reduction == "none" else out

    args = (p["features"], p["kernel"], p["bias"], pos_weight, p["weight"] if use_weight else None)
    argnums = tuple(i for i, a in enumerate(args) if a is not None)
    got = jax.value_and_grad(fused, argnums=argnums)(*args)
    expected = jax.value_and_grad(materialised, argnums=argnums)(*args)
    return got, expected, labels, pos_weight, where, argnums


class EqualsMaterialisedTest(parameterized.TestCase):
    @parameterized.product(
        reduction=("mean", "sum", "batchmean", "none"),
        sparse=(False, True),
        chunk_size=(None, 8, 15),
    )
    def test_value_and_gradients(self, reduction, sparse, chunk_size):
        p = _problem()
        got, expected, *_ = _fused_and_materialised(
            p, sparse=sparse, reduction=reduction, chunk_size=chunk_size, use_pos_weight=True,
            use_weight=True, use_where=True,
        )  # fmt: skip
        # float32 summation-order rounding: sums of up to 45 * 12 terms of either sign
        chex.assert_trees_all_close(got, expected, rtol=2e-6, atol=1e-6)

    @parameterized.parameters(
        {"use_pos_weight": False, "use_weight": False, "use_where": False},
        {"use_pos_weight": True, "use_weight": False, "use_where": False, "pos_weight_scalar": True},
        {"use_pos_weight": False, "use_weight": True, "use_where": True, "label_smoothing": 0.1},
        {"use_pos_weight": True, "use_weight": False, "use_where": True, "label_smoothing": 0.2},
    )
    def test_options(self, **options):
        p = _problem(seed=1)
        for chunk_size in (16, 45, 100):
            got, expected, *_ = _fused_and_materialised(
                p, sparse=False, reduction="mean", chunk_size=chunk_size, **options
            )
            chex.assert_trees_all_close(got, expected, rtol=2e-6, atol=1e-7)

    @parameterized.parameters("mean", "sum", "batchmean")
    def test_against_float64_reference(self, reduction):
        p = _problem(seed=2)
        (value, grads), _, labels, pos_weight, where, _ = _fused_and_materialised(
            p, sparse=True, reduction=reduction, chunk_size=16, use_pos_weight=True, use_weight=True,
            use_where=True,
        )  # fmt: skip
        ref_value, ref_grads = reference.linear_bce_float64(
            p, labels, where=where, pos_weight=pos_weight, weight=p["weight"], reduction=reduction
        )
        np.testing.assert_allclose(value, ref_value, rtol=2e-6)
        for got, name in zip(grads[:3], ("features", "kernel", "bias"), strict=True):
            np.testing.assert_allclose(got, ref_grads[name], rtol=1e-5, atol=1e-6 * np.abs(ref_grads[name]).max())

    def test_labels_of_every_dtype(self):
        p = _problem(seed=3)
        soft = np.random.default_rng(3).uniform(size=(BATCH, CLASSES)).astype(np.float32)
        for labels in (p["labels"], p["labels"].astype(np.int8), p["labels"].astype(np.float32), soft):
            got = jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], labels, bias=p["bias"], chunk_size=8)
            expected = jaxbce.binary_cross_entropy_with_logits(p["features"] @ p["kernel"] + p["bias"], labels)
            np.testing.assert_allclose(got, expected, rtol=2e-6)

    @parameterized.product(
        shape=[(3, 4), (2, 3, 2), (12,)], reduction=["mean", "batchmean", "sum"], mask=["none", "where", "ignore"]
    )
    def test_reductions_count_as_the_materialised_loss_for_every_rank(self, shape, reduction, mask):
        """ "batchmean" averages over the logits' leading axis (the B of (B, T, C)), "mean" over kept elements;
        a (D,) feature vector has logits (C,), whose one axis holds the examples."""
        p = _problem(seed=5)
        features = p["features"].reshape(*shape, DIM) if len(shape) > 1 else p["features"][0]
        labels = p["labels"].reshape(*shape, CLASSES) if len(shape) > 1 else p["labels"][0]
        labels = labels.astype(np.float32)
        options = {}
        if mask == "where" and len(shape) > 1:
            options["where"] = p["where"].reshape(shape)
            options["where"][0] = False  # a whole leading example masked
        if mask == "ignore":
            known = np.arange(CLASSES) < 40
            if len(shape) > 1:  # and some whole examples unknown
                known = known & p["where"].reshape(shape)[..., None]
            labels = np.where(known, labels, -1)
            options["ignore_label"] = -1
        got = jaxbce.linear_binary_cross_entropy(features, p["kernel"], labels, reduction=reduction, chunk_size=16,
                                                 **options)  # fmt: skip
        expected = linear_bce(features, p["kernel"], None, None, None, labels=labels, reduction=reduction,
                              **options)  # fmt: skip
        np.testing.assert_allclose(got, expected, rtol=2e-6)

    @parameterized.product(
        weight_shape=[(CLASSES,), (BATCH, 1), (BATCH, CLASSES), (1, CLASSES), (), (1, 1)],
        reduction=["mean", "batchmean", "none"],
    )
    def test_weight_broadcasts_as_in_the_materialised_loss(self, weight_shape, reduction):
        """(C,) per class, (B, 1) per example, (B, C) per element: value and gradients in features, kernel and
        weight equal the materialised loss's; NaN weights of masked rows reach nothing."""
        p = _problem(seed=6)
        weight = np.random.default_rng(7).uniform(0.0, 2.0, size=weight_shape).astype(np.float32)
        if weight.ndim == 2 and weight.shape[0] == BATCH:
            weight[~p["where"]] = np.nan
        labels = p["labels"].astype(np.float32)

        def fused(f, k, w):
            return jaxbce.linear_binary_cross_entropy(
                f, k, labels, weight=w, where=p["where"], reduction=reduction, chunk_size=16
            ).sum()

        def materialised(f, k, w):
            return linear_bce(f, k, None, None, w, labels=labels, where=p["where"], reduction=reduction).sum()

        got = jax.value_and_grad(fused, argnums=(0, 1, 2))(p["features"], p["kernel"], weight)
        expected = jax.value_and_grad(materialised, argnums=(0, 1, 2))(p["features"], p["kernel"], weight)
        chex.assert_trees_all_close(got, expected, rtol=2e-5, atol=1e-6)

    def test_a_square_batch_weights_classes_as_the_materialised_loss_does(self):
        """With B == C a (C,) weight is per class in both losses (it was per example here, a silent difference)."""
        p = _problem(seed=8)
        features, labels = p["features"][:9], p["labels"][:9, :9].astype(np.float32)
        kernel, weight = p["kernel"][:, :9], np.linspace(0.5, 2.0, 9).astype(np.float32)
        got = jaxbce.linear_binary_cross_entropy(features, kernel, labels, weight=weight)
        expected = jaxbce.binary_cross_entropy_with_logits(features @ kernel, labels, weight=weight)
        np.testing.assert_allclose(got, expected, rtol=2e-6)
        with pytest.raises(ValueError, match=r"is per example: pass weight\[\.\.\., None\]"):
            jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], p["labels"], weight=np.ones(BATCH))

    def test_leading_batch_dimensions(self):
        p = _problem(seed=4)
        features = p["features"].reshape(3, 4, DIM)
        labels = p["labels"].reshape(3, 4, CLASSES)
        got = jaxbce.linear_binary_cross_entropy(features, p["kernel"], labels, reduction="none", chunk_size=16)
        self.assertEqual(got.shape, (3, 4))
        expected = jaxbce.binary_cross_entropy_with_logits(features @ p["kernel"], labels, reduction="sum", axis=-1)
        np.testing.assert_allclose(got, expected, rtol=2e-6)

    def test_float64(self):
        p = _problem(seed=5)
        with enable_x64(True):
            args = [p[n].astype(np.float64) for n in ("features", "kernel", "bias")]

            def fused(f, k, b):
                return jaxbce.linear_binary_cross_entropy(f, k, positives=p["positives"], bias=b, chunk_size=8)

            value, grads = jax.value_and_grad(fused, argnums=(0, 1, 2))(*args)
            self.assertEqual(value.dtype, np.float64)
            ref_value, ref_grads = reference.linear_bce_float64(
                p, _dense(p["positives"]), where=None, pos_weight=None, weight=None, reduction="mean"
            )
        np.testing.assert_allclose(value, ref_value, rtol=1e-14)
        for got, name in zip(grads, ("features", "kernel", "bias"), strict=True):
            np.testing.assert_allclose(got, ref_grads[name], rtol=1e-12, atol=1e-15)

    def test_bfloat16_inputs_use_float32_logits(self):
        p = _problem(seed=6)
        features, kernel = p["features"].astype(jnp.bfloat16), p["kernel"].astype(jnp.bfloat16)
        got, grads = jax.value_and_grad(
            lambda f, k: jaxbce.linear_binary_cross_entropy(f, k, p["labels"]), argnums=(0, 1)
        )(features, kernel)
        self.assertEqual(got.dtype, jnp.bfloat16)
        self.assertEqual(grads[0].dtype, jnp.bfloat16)
        self.assertEqual(grads[1].dtype, jnp.bfloat16)
        f32 = np.asarray(features, np.float32) @ np.asarray(kernel, np.float32)
        expected = jaxbce.binary_cross_entropy_with_logits(f32, p["labels"])
        np.testing.assert_allclose(np.float32(got), expected, rtol=2**-8)

    def test_vmap_over_an_ensemble_of_heads(self):
        p = _problem(seed=7)
        kernels = np.stack([p["kernel"] * s for s in (0.5, 1.0, 2.0)])
        got = jax.vmap(
            lambda k: jaxbce.linear_binary_cross_entropy(p["features"], k, positives=p["positives"], chunk_size=16)
        )(kernels)
        expected = [jaxbce.binary_cross_entropy_with_logits(p["features"] @ k, _dense(p["positives"])) for k in kernels]
        np.testing.assert_allclose(got, expected, rtol=2e-6)


class MaskingAndLimitsTest(chex.TestCase):
    def test_masked_rows_may_hold_nan(self):
        p = _problem(seed=8)
        features, labels = p["features"].copy(), p["labels"].astype(np.float32)
        masked = ~p["where"]
        features[masked] = np.nan
        labels[masked] = np.nan

        def loss(f, k, b):
            return jaxbce.linear_binary_cross_entropy(f, k, labels, bias=b, where=p["where"], chunk_size=8)

        value, (d_features, d_kernel, d_bias) = jax.value_and_grad(loss, argnums=(0, 1, 2))(
            features, p["kernel"], p["bias"]
        )
        clean_labels = np.where(masked[:, None], 0, labels)
        expected = linear_bce(np.where(masked[:, None], 0, features), p["kernel"], p["bias"], None, None,
                                 labels=clean_labels, where=p["where"], reduction="mean")  # fmt: skip
        np.testing.assert_allclose(value, expected, rtol=2e-6)
        self.assertTrue(np.all(np.isfinite(d_kernel)) and np.all(np.isfinite(d_bias)))
        np.testing.assert_array_equal(d_features[masked], 0)
        self.assertTrue(np.all(np.isfinite(d_features)))

    def test_nothing_kept_is_zero_with_zero_gradient(self):
        p = _problem(seed=9)
        for reduction in ("mean", "batchmean"):
            value, grad = jax.value_and_grad(
                lambda k, r=reduction: jaxbce.linear_binary_cross_entropy(
                    p["features"], k, p["labels"], where=np.zeros(BATCH, bool), reduction=r
                )
            )(p["kernel"])
            self.assertEqual(float(value), 0.0)
            np.testing.assert_array_equal(grad, 0)

    def test_nan_features_propagate_where_kept(self):
        p = _problem(seed=10)
        features = p["features"].copy()
        features[0, 0] = np.nan
        value = jaxbce.linear_binary_cross_entropy(features, p["kernel"], p["labels"])
        self.assertTrue(np.isnan(value))

    def test_out_of_range_positives_are_ignored_and_reported(self):
        p = _problem(seed=11)
        positives = p["positives"].copy()
        positives[0, 3] = CLASSES  # one past the end
        got = jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], positives=positives, chunk_size=16)
        expected = jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], positives=p["positives"])
        np.testing.assert_allclose(got, expected, rtol=2e-6)
        message = r"positives must be class indices in \[-1, 45\) \(-1: padding\); got 45 at index \[0 3\]"
        with pytest.raises(checkify.JaxRuntimeError, match=message):
            jaxbce.checked(jaxbce.linear_binary_cross_entropy)(p["features"], p["kernel"], positives=positives)

    def test_value_checks_name_the_argument(self):
        p = _problem(seed=12)
        labels = p["labels"].astype(np.float32)
        labels[2, 3] = 2.0
        with pytest.raises(checkify.JaxRuntimeError, match=r"labels must be in \[0, 1\]; got 2.0 at index \[2 3\]"):
            jaxbce.checked(jaxbce.linear_binary_cross_entropy)(p["features"], p["kernel"], labels)
        with pytest.raises(checkify.JaxRuntimeError, match="weight must be non-negative"):
            jaxbce.checked(jaxbce.linear_binary_cross_entropy)(
                p["features"], p["kernel"], p["labels"], weight=-np.ones((BATCH, 1), np.float32)
            )


class IgnoreLabelTest(parameterized.TestCase):
    @parameterized.product(reduction=["none", "sum", "mean", "batchmean"], chunk_size=[8, 15])
    def test_equals_the_materialised_loss_with_ignore_label(self, reduction, chunk_size):
        """Dense labels with -1 (unknown) elements, a row with every label unknown and a masked row: value and
        gradients equal binary_cross_entropy_with_logits(..., ignore_label=-1) of the materialised logits
        (whose mean counts kept elements and whose batchmean counts examples with a known label)."""
        p = _problem(seed=13)
        rng = np.random.default_rng(13)
        labels = np.where(rng.uniform(size=p["labels"].shape) < 0.3, -1, p["labels"]).astype(np.int32)
        labels[4] = -1
        where = np.ones(BATCH, bool)
        where[7] = False

        def fused(features, kernel, bias):
            return jaxbce.linear_binary_cross_entropy(
                features, kernel, labels, bias=bias, pos_weight=p["pos_weight"], where=where, ignore_label=-1,
                reduction=reduction, chunk_size=chunk_size,
            )  # fmt: skip

        def materialised(features, kernel, bias):
            elementwise_reduction = "sum" if reduction == "none" else reduction
            return jaxbce.binary_cross_entropy_with_logits(
                features @ kernel + bias, labels, pos_weight=p["pos_weight"], where=where[:, None], ignore_label=-1,
                reduction=elementwise_reduction, axis=-1 if reduction == "none" else None,
            )  # fmt: skip

        arguments = (p["features"], p["kernel"], p["bias"])
        scalar = (lambda f: f) if reduction != "none" else (lambda f: lambda *a: jnp.sum(f(*a) * np.arange(BATCH)))
        got, got_grads = jax.value_and_grad(scalar(fused), argnums=(0, 1, 2))(*arguments)
        expected, expected_grads = jax.value_and_grad(scalar(materialised), argnums=(0, 1, 2))(*arguments)
        np.testing.assert_allclose(got, expected, rtol=3e-6)
        np.testing.assert_allclose(fused(*arguments), materialised(*arguments), rtol=3e-6, atol=1e-7)
        for g, e in zip(got_grads, expected_grads, strict=True):
            np.testing.assert_allclose(g, e, rtol=3e-5, atol=1e-6)

    def test_ignored_labels_pass_the_value_check_and_positives_refuse_it(self):
        p = _problem(seed=14)
        labels = np.where(p["labels"], 1, 255).astype(np.int32)
        value = jaxbce.checked(jaxbce.linear_binary_cross_entropy)(p["features"], p["kernel"], labels, ignore_label=255)
        logits = p["features"] @ p["kernel"]
        expected = jaxbce.binary_cross_entropy_with_logits(logits, np.ones_like(logits), where=p["labels"])
        np.testing.assert_allclose(value, expected, rtol=3e-6)
        with pytest.raises(ValueError, match="ignore_label applies to dense labels"):
            jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], positives=p["positives"], ignore_label=-1)


class ErrorsTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("neither_labels_nor_positives", {}, ValueError, "exactly one of labels"),
        ("both", {"labels": "labels", "positives": "positives"}, ValueError, "exactly one of labels"),
        ("labels_shape", {"labels": "labels_t"}, ValueError, r"labels must have shape .*\(12, 45\)"),
        ("positives_dtype", {"positives": "positives_f"}, TypeError, "positives must have an integer dtype"),
        ("positives_shape", {"positives": "positives_1d"}, ValueError, "positives must have shape"),
        ("bias_shape", {"labels": "labels", "bias": "bias_2d"}, ValueError, r"bias must have shape \(C,\)"),
        ("pos_weight_shape", {"labels": "labels", "pos_weight": "pw_bad"}, ValueError, "pos_weight of shape"),
        ("weight_shape", {"labels": "labels", "weight": "weight_bad"}, ValueError, "weight of shape"),
        ("where_dtype", {"labels": "labels", "where": "weight"}, TypeError, "where must be a bool array"),
        ("reduction", {"labels": "labels", "reduction": "weighted_mean"}, ValueError, "'batchmean'"),
        ("chunk_size", {"labels": "labels", "chunk_size": 0}, ValueError, "chunk_size must be"),
        ("smoothing", {"labels": "labels", "label_smoothing": 1.5}, ValueError, "label_smoothing must be in"),
    )
    def test_bad_arguments(self, kwargs, error, message):
        p = _problem()
        arrays = {
            "labels": p["labels"], "labels_t": p["labels"].T, "positives": p["positives"],
            "positives_f": p["positives"].astype(np.float32), "positives_1d": p["positives"][0],
            "bias_2d": p["bias"][None], "pw_bad": np.ones(CLASSES + 1, np.float32),
            "weight_bad": np.ones(BATCH + 1, np.float32), "weight": p["weight"],
        }  # fmt: skip
        kwargs = {k: arrays[v] if isinstance(v, str) and v in arrays else v for k, v in kwargs.items()}
        with pytest.raises(error, match=message):
            jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], **kwargs)

    def test_kernel_shape(self):
        p = _problem()
        with pytest.raises(ValueError, match=r"kernel must have shape \(features.shape\[-1\], C\) = \(7, 'C'\)"):
            jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"].T, p["labels"].T)
        with pytest.raises(TypeError, match="kernel must have a real floating dtype"):
            jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"].astype(np.int32), p["labels"])

    def test_differentiating_labels_is_an_error(self):
        p = _problem()
        with pytest.raises(ValueError, match="does not differentiate its labels"):
            jax.grad(lambda y: jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], y))(
                p["labels"].astype(np.float32)
            )

    def test_forward_mode_is_a_clear_error(self):
        p = _problem()
        with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
            jax.jvp(lambda k: jaxbce.linear_binary_cross_entropy(p["features"], k, p["labels"]),
                    (p["kernel"],), (p["kernel"],))  # fmt: skip


class NeverMaterialisedTest(chex.TestCase):
    """The compiled value_and_grad holds nothing of size batch x C: its temporaries are far below one such
    array, while the materialised form's are several."""

    @parameterized.parameters("mean", "none")
    def test_temporaries_are_far_below_batch_times_classes(self, reduction):
        batch, dim, classes = 64, 16, 2**14
        rng = np.random.default_rng(0)
        features = rng.normal(size=(batch, dim)).astype(np.float32)
        kernel = rng.normal(size=(dim, classes)).astype(np.float32)
        positives = rng.integers(-1, classes, size=(batch, 8)).astype(np.int32)

        def fused(f, k):
            return jaxbce.linear_binary_cross_entropy(
                f, k, positives=positives, reduction=reduction, chunk_size=512
            ).sum()

        def materialised(f, k):
            return jaxbce.binary_cross_entropy_with_logits(f @ k, _dense(positives, classes), reduction="sum")

        logits_bytes = batch * classes * 4
        temp = {}
        for name, loss in (("fused", fused), ("materialised", materialised)):
            compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(features, kernel).compile()
            temp[name] = compiled.memory_analysis().temp_size_in_bytes
        self.assertLess(temp["fused"], logits_bytes / 4, temp)
        self.assertGreaterEqual(temp["materialised"], logits_bytes, temp)

    def test_matmuls_per_chunk(self):
        """One dot_general in the loop of a value-only call; three in value_and_grad (logits, d features,
        d kernel): the backward pass of a scalar loss only scales what the forward pass formed; two when the
        features are not differentiated (a linear probe), as the VJP skips what nobody asked for."""
        p = _problem()

        def loss(f, k):
            return jaxbce.linear_binary_cross_entropy(f, k, p["labels"], chunk_size=9)

        def dots(fn):
            return len(re.findall(r"stablehlo\.dot_general", jax.jit(fn).lower(p["features"], p["kernel"]).as_text()))

        self.assertEqual(dots(loss), 1)
        self.assertEqual(dots(jax.value_and_grad(loss, argnums=(0, 1))), 3)
        self.assertEqual(dots(jax.value_and_grad(loss, argnums=1)), 2)
        self.assertEqual(dots(jax.value_and_grad(loss, argnums=0)), 2)

        def bias_only(f, k):  # a bias or pos_weight alone: the logits' matmul only
            return jax.grad(lambda b: jaxbce.linear_binary_cross_entropy(f, k, p["labels"], bias=b, chunk_size=9))(
                p["bias"]
            )

        self.assertEqual(dots(bias_only), 1)


@devices.eight_devices
class ShardedTest(parameterized.TestCase):
    """Kernel sharded over classes on "model", examples over "data": the same numbers, no all-gather."""

    def _sharded(self, mesh, classes=64, labels_spec=None):
        rng = np.random.default_rng(0)
        p = {
            "features": rng.normal(size=(16, 8)).astype(np.float32),
            "kernel": rng.normal(size=(8, classes)).astype(np.float32),
            "bias": rng.normal(size=(classes,)).astype(np.float32),
            "pos_weight": rng.uniform(0.5, 2, size=(classes,)).astype(np.float32),
            "labels": rng.uniform(size=(16, classes)) < 0.2,
            "positives": rng.integers(-1, classes, size=(16, 5)).astype(np.int32),
            "where": rng.uniform(size=(16,)) > 0.2,
        }
        specs = {"features": P("data"), "kernel": P(None, "model"), "bias": P("model"), "pos_weight": P("model"),
                 "labels": labels_spec or P("data", "model"), "positives": P("data"), "where": P("data")}  # fmt: skip
        return p, {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in p.items()}

    @parameterized.product(
        # dense labels sharded like the logits, over the examples only, or replicated; positives over the examples
        target_and_spec=[("labels", P("data", "model")), ("labels", P("data")), ("labels", P()),
                         ("positives", P("data"))],
        axis_type=[AxisType.Explicit, AxisType.Auto],
    )  # fmt: skip
    def test_same_numbers_and_no_all_gather(self, target_and_spec, axis_type):
        """Explicit axes (jax.make_mesh's default) and Auto axes: one device's numbers, no all-gather, and the
        per-example losses sharded like the features."""
        target, labels_spec = target_and_spec
        mesh = devices.mesh(axis_type)
        p, sharded = self._sharded(mesh, labels_spec=labels_spec)

        def loss(f, k, b, pw, y, where, reduction="mean"):
            return jaxbce.linear_binary_cross_entropy(f, k, **{target: y}, bias=b, pos_weight=pw, where=where,
                                                      chunk_size=16, reduction=reduction)  # fmt: skip

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        names = ("features", "kernel", "bias", "pos_weight", target, "where")
        expected_value, expected_grads = step(*(jax.device_put(p[n], jax.devices()[0]) for n in names))
        with set_mesh(mesh):
            value, grads = step(*(sharded[n] for n in names))
            hlo = step.lower(*(sharded[n] for n in names)).compile().as_text()
            per_example = jax.jit(functools.partial(loss, reduction="none"))(*(sharded[n] for n in names))
        np.testing.assert_allclose(value, expected_value, rtol=2e-6)
        chex.assert_trees_all_close(grads, expected_grads, rtol=2e-5, atol=1e-7)
        self.assertTrue(grads[1].sharding.is_equivalent_to(sharded["kernel"].sharding, 2))
        self.assertTrue(per_example.sharding.is_equivalent_to(sharded["features"].sharding, 1))
        collectives = set(re.findall(r"\b(all-gather|all-to-all|all-reduce|collective-permute)\(", hlo))
        self.assertNotIn("all-gather", collectives)
        self.assertNotIn("all-to-all", collectives)

    def test_inside_shard_map_with_local_classes(self):
        """The docs/scaling.md recipe: each device holds its classes' kernel columns; positives are made local
        (other shards' classes become -1); per-shard sums are psum'd and divided once."""
        mesh = devices.mesh(AxisType.Auto)
        p, sharded = self._sharded(mesh)
        classes = p["kernel"].shape[1]

        @jax.jit
        @jax.shard_map(mesh=mesh, in_specs=(P("data"), P(None, "model"), P("data"), P("data")), out_specs=P())
        def global_mean(features, kernel, positives, where):
            local_classes = kernel.shape[1]
            first = jax.lax.axis_index("model") * local_classes
            local = jnp.where((positives >= first) & (positives < first + local_classes), positives - first, -1)
            total = jaxbce.linear_binary_cross_entropy(features, kernel, positives=local, where=where, reduction="sum")
            kept = jax.lax.psum(jnp.sum(where, dtype=jnp.float32), "data")
            return jax.lax.psum(total, ("data", "model")) / (kept * classes)

        args = (sharded["features"], sharded["kernel"], sharded["positives"], sharded["where"])
        with set_mesh(mesh):
            value, grads = jax.value_and_grad(global_mean, argnums=(0, 1))(*args)
        expected, expected_grads = jax.value_and_grad(
            lambda f, k: jaxbce.linear_binary_cross_entropy(f, k, positives=p["positives"], where=p["where"]),
            argnums=(0, 1),
        )(p["features"], p["kernel"])
        np.testing.assert_allclose(value, expected, rtol=2e-6)
        chex.assert_trees_all_close(grads, expected_grads, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize(
    "options",
    [[], ["--fused-update", "--loss", "focal"], ["--fused-update", "--dtype", "bfloat16", "--loss", "asymmetric"]],
    ids=["fused loss", "fused update, focal", "fused update, bfloat16 rounded stochastically, asymmetric"],
)
def test_extreme_multilabel_example_learns(options):
    """examples/extreme_multilabel.py at a small size, with the classifier's update fused or not, and with a 16-bit
    classifier: it runs, and held-out precision@1 rises from chance (the memory of the fused update is tested in
    test_update.py, at a size with more than one chunk)."""
    command = [sys.executable, str(ROOT / "examples" / "extreme_multilabel.py"), "--classes", "3000", "--train",
               "4096", "--test", "512", "--batch", "128", "--steps", "60"]  # fmt: skip
    output = subprocess.run(command + options, capture_output=True, text=True, timeout=300, check=True).stdout
    before = float(re.search(r"before training: P@1 ([\d.]+)", output)[1])
    after = float(re.search(r"after training\s*: P@1 ([\d.]+)", output)[1])
    assert after > before + 0.1, output
