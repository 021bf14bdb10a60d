"""``jax.export`` with a symbolic batch dimension: every function, with every optional argument, exports with
the shapes ``("b", C)``, round-trips through ``serialize``/``deserialize``, and the deserialized program gives the
same values as the function for two concrete batch sizes. Driven by the registry, plus the fused loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jaxbce
from jaxbce._arguments import Role
from loss_table import LOSSES

CLASSES, FEATURES = 5, 4


def _round_trip(function, specs, concrete):
    exported = export.deserialize(export.export(jax.jit(function))(*specs).serialize())
    for args in concrete:
        np.testing.assert_allclose(exported.call(*args), function(*args), rtol=1e-6, atol=1e-7)
    return exported


def _sample(role, shape, rng):
    if role is Role.LOGITS:
        return rng.normal(scale=3, size=shape).astype(np.float32)
    if role is Role.NON_NEGATIVE:
        return rng.uniform(0.5, 2, shape).astype(np.float32)
    return rng.uniform(0.01, 0.99, shape).astype(np.float32)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_registered_losses_export_with_a_symbolic_batch(name, reduction):
    loss = LOSSES[name]
    (batch,) = export.symbolic_shape("b")
    # (shape with the symbolic batch, role) of every array: the loss's own, a per-class pos_weight or alpha,
    # a per-element weight and a per-row mask.
    per_class = (Role.NON_NEGATIVE, Role.FRACTION)
    arrays = [(name, (CLASSES,) if role in per_class else None, role) for name, role in loss.arrays]
    if loss.takes_weight:
        arrays.append(("weight", None, Role.NON_NEGATIVE))
    arrays.append(("where", (None, 1), None))
    names = [name for name, _, _ in arrays]

    def function(*values):
        given = dict(zip(names, values, strict=True))
        positional = [given.pop(name) for name in loss.positional]
        return loss.function(*positional, **given, reduction=reduction)

    def shape(fixed, b):
        if fixed is None:
            return (b, CLASSES)
        return tuple(b if d is None else d for d in fixed)

    specs = [
        jax.ShapeDtypeStruct(shape(fixed, batch), jnp.bool_ if role is None else jnp.float32)
        for _, fixed, role in arrays
    ]
    rng = np.random.default_rng(0)
    concrete = [
        [
            (rng.uniform(size=shape(fixed, b)) > 0.3) if role is None else _sample(role, shape(fixed, b), rng)
            for _, fixed, role in arrays
        ]
        for b in (3, 7)
    ]
    exported = _round_trip(function, specs, concrete)
    assert str(exported.in_avals[0].shape[0]) == "b"


FUSED = {
    "linear_binary_cross_entropy": (jaxbce.linear_binary_cross_entropy, {"poly_epsilon": 0.5}),
    "linear_sigmoid_focal_loss": (jaxbce.linear_sigmoid_focal_loss, {"gamma": 1.5}),
    "linear_asymmetric_loss": (jaxbce.linear_asymmetric_loss, {}),
}


@pytest.mark.parametrize("loss", list(FUSED))
@pytest.mark.parametrize("labels", ["dense", "sparse"])
def test_fused_losses_export_with_a_symbolic_batch(labels, loss):
    (batch,) = export.symbolic_shape("b")
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    bias = rng.normal(size=CLASSES).astype(np.float32)
    pos_weight = rng.uniform(0.5, 2, CLASSES).astype(np.float32)

    def function(features, targets, where):
        dense = {"labels": targets, "ignore_label": -1} if labels == "dense" else {"positives": targets}
        fused, options = FUSED[loss]
        per_class = {"alpha": pos_weight / 2} if loss == "linear_sigmoid_focal_loss" else {"pos_weight": pos_weight}
        return fused(features, kernel, **dense, bias=bias, **per_class, where=where, reduction="batchmean", **options)

    target_spec = (
        jax.ShapeDtypeStruct((batch, CLASSES), jnp.float32)
        if labels == "dense"
        else jax.ShapeDtypeStruct((batch, 2), jnp.int32)
    )
    specs = [jax.ShapeDtypeStruct((batch, FEATURES), jnp.float32), target_spec, jax.ShapeDtypeStruct((batch,), bool)]
    concrete = []
    for b in (3, 7):
        targets = (
            rng.integers(-1, 2, (b, CLASSES)).astype(np.float32)  # -1: unknown, ignored
            if labels == "dense"
            else rng.integers(-1, CLASSES, (b, 2)).astype(np.int32)
        )
        concrete.append([rng.normal(size=(b, FEATURES)).astype(np.float32), targets, rng.uniform(size=b) > 0.3])
    _round_trip(function, specs, concrete)


def test_sigmoid_contrastive_loss_exports_with_a_symbolic_batch():
    """B is both the rows and the columns of the pairs: blocks and chunks of a static size, their number
    symbolic, the last one padded."""
    (batch,) = export.symbolic_shape("b")

    def function(images, texts, scale, bias, where):
        return jaxbce.sigmoid_contrastive_loss(images, texts, scale, bias, where=where, chunk_size=4)

    embeddings = jax.ShapeDtypeStruct((batch, FEATURES), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    specs = [embeddings, embeddings, scalar, scalar, jax.ShapeDtypeStruct((batch,), bool)]
    rng = np.random.default_rng(2)
    concrete = [
        [
            *rng.normal(size=(2, b, FEATURES)).astype(np.float32),
            np.float32(5.0),
            np.float32(-2.0),
            rng.uniform(size=b) > 0.2,
        ]
        for b in (3, 9)
    ]
    _round_trip(function, specs, concrete)
