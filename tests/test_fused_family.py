"""The sigmoid family fused: linear_sigmoid_focal_loss, linear_asymmetric_loss and linear_binary_cross_entropy's
poly_epsilon against their elementwise losses of the materialised logits ``features @ kernel + bias`` (the
contract's definition), at a prime label count with a partial last chunk, in both kernel layouts, with dense,
padded-positive and BCOO labels, in a one-device session and sharded over classes on 8 devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify, sparse
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import devices
import jaxbce
from jax_compat import set_mesh

B, D, C = 10, 5, 53  # C prime: chunks of 16 leave a partial last one
RNG = np.random.default_rng(7)
FEATURES = RNG.normal(size=(B, D)).astype(np.float32)
KERNEL = (RNG.normal(size=(D, C)) / 2).astype(np.float32)
BIAS = RNG.normal(size=(C,)).astype(np.float32)
PER_CLASS = RNG.uniform(0.1, 0.9, size=(C,)).astype(np.float32)
POSITIVES = RNG.integers(-1, C, size=(B, 4)).astype(np.int32)
LABELS = (POSITIVES[..., None] == np.arange(C)).any(axis=-2).astype(np.float32)
BCOO_LABELS = sparse.BCOO.fromdense(LABELS)  # built outside jit: BCOO.fromdense needs a concrete entry count

# (fused, elementwise, the per-class array's name, static options)
FAMILY = {
    "focal": (jaxbce.linear_sigmoid_focal_loss, jaxbce.sigmoid_focal_loss, "alpha", {"gamma": 2.0}),
    "focal-poly-smoothed": (
        jaxbce.linear_sigmoid_focal_loss,
        jaxbce.sigmoid_focal_loss,
        "alpha",
        {"gamma": 0.5, "poly_epsilon": -1.0, "label_smoothing": 0.1},
    ),
    "asymmetric": (jaxbce.linear_asymmetric_loss, jaxbce.asymmetric_loss, "pos_weight", {}),
    "asymmetric-stopped": (
        jaxbce.linear_asymmetric_loss,
        jaxbce.asymmetric_loss,
        "pos_weight",
        {"gamma_pos": 1.0, "gamma_neg": 2.5, "clip": 0.0, "stop_focusing_gradient": True},
    ),
    "bce-poly": (
        jaxbce.linear_binary_cross_entropy,
        jaxbce.binary_cross_entropy_with_logits,
        "pos_weight",
        {"poly_epsilon": 2.0},
    ),
}
REDUCTIONS = ("mean", "sum", "batchmean", "none")


def _materialised(name, reduction, features, kernel, bias, per_class):
    _, elementwise, per_class_name, options = FAMILY[name]
    per_example = {"reduction": "sum", "axis": -1} if reduction == "none" else {"reduction": reduction}
    logits = features @ kernel + bias
    return elementwise(logits, LABELS, **{per_class_name: per_class}, **per_example, **options)


def _fused(name, reduction, layout, labels, features, kernel, bias, per_class):
    fused, _, per_class_name, options = FAMILY[name]
    targets = {
        "dense": {"labels": LABELS},
        "positives": {"positives": POSITIVES},
        "bcoo": {"labels": BCOO_LABELS},
    }[labels]
    kernel = kernel.T if layout == "out_in" else kernel
    return fused(
        features, kernel, **targets, bias=bias, **{per_class_name: per_class}, reduction=reduction, chunk_size=16,
        kernel_layout=layout, **options,
    )  # fmt: skip


def _objective(function, reduction):
    coefficients = jnp.linspace(0.5, 1.5, B)  # "none": every row's cotangent differs
    if reduction == "none":
        return lambda *args: jnp.sum(coefficients * function(*args))
    return function


@pytest.mark.parametrize("labels", ["dense", "positives", "bcoo"])
@pytest.mark.parametrize("layout", ["in_out", "out_in"])
@pytest.mark.parametrize("name", list(FAMILY))
def test_value_and_gradients_equal_the_materialised_loss(name, layout, labels):
    """Value and gradients in features, kernel, bias and the per-class array (pos_weight or alpha); the reduction
    cycles over the cases, so that each meets every loss, layout and kind of labels."""
    index = (
        list(FAMILY).index(name) + 2 * ["in_out", "out_in"].index(layout) + ["dense", "positives", "bcoo"].index(labels)
    )
    reduction = REDUCTIONS[index % len(REDUCTIONS)]
    arguments = (FEATURES, KERNEL, BIAS, PER_CLASS)
    fused = _objective(functools.partial(_fused, name, reduction, layout, labels), reduction)
    expected = _objective(functools.partial(_materialised, name, reduction), reduction)
    value, grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2, 3)))(*arguments)
    expected_value, expected_grads = jax.value_and_grad(expected, argnums=(0, 1, 2, 3))(*arguments)
    np.testing.assert_allclose(value, expected_value, rtol=2e-6, err_msg=reduction)
    for got, want, what in zip(grads, expected_grads, ("features", "kernel", "bias", "per_class"), strict=True):
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6 * scale, err_msg=f"{what} {reduction}")


@pytest.mark.parametrize("name", ["focal", "asymmetric"])
def test_static_options_and_per_example_none(name):
    """alpha as a static float and None, no pos_weight, no bias: the elementwise loss's defaults."""
    fused, elementwise, per_class_name, _ = FAMILY[name]
    cases = [{"alpha": 0.25}, {"alpha": None}] if per_class_name == "alpha" else [{"pos_weight": None}]
    for options in cases:
        got = fused(FEATURES, KERNEL, positives=POSITIVES, reduction="none", chunk_size=16, **options)
        want = elementwise(FEATURES @ KERNEL, LABELS, reduction="sum", axis=-1, **options)
        np.testing.assert_allclose(got, want, rtol=2e-6)


def test_ignore_label_and_masks():
    """Dense labels with -1 unknown, an example mask and a per-example weight, as the elementwise loss takes them."""
    labels = np.where(RNG.uniform(size=(B, C)) < 0.1, -1, LABELS).astype(np.float32)
    where = np.arange(B) % 3 != 0
    weight = RNG.uniform(0.5, 2.0, size=(B, 1)).astype(np.float32)
    got = jaxbce.linear_sigmoid_focal_loss(
        FEATURES, KERNEL, labels, bias=BIAS, alpha=PER_CLASS, weight=weight, where=where, ignore_label=-1,
        chunk_size=16,
    )  # fmt: skip
    want = jaxbce.sigmoid_focal_loss(
        FEATURES @ KERNEL + BIAS, labels, alpha=PER_CLASS, weight=weight, where=where[:, None], ignore_label=-1
    )
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_alpha_out_of_range_is_an_error_naming_it():
    with pytest.raises(ValueError, match="alpha must be in"):
        jaxbce.linear_sigmoid_focal_loss(FEATURES, KERNEL, LABELS, alpha=1.5)
    with pytest.raises(ValueError, match="gamma_neg must be a finite Python float"):
        jaxbce.linear_asymmetric_loss(FEATURES, KERNEL, LABELS, gamma_neg=-1.0)
    bad = PER_CLASS.copy()
    bad[3] = 1.5
    with pytest.raises(checkify.JaxRuntimeError, match="alpha must be in"):
        jaxbce.checked(jaxbce.linear_sigmoid_focal_loss)(FEATURES, KERNEL, LABELS, alpha=bad)


@devices.eight_devices
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("name", ["focal", "asymmetric"])
def test_sharded_over_classes_equals_one_device(name, axis_type):
    """The kernel, bias and per-class array sharded over "model" (C = 54: a multiple of the 2 class shards),
    the features and labels over "data": one device's value and gradients, each gradient in its argument's
    sharding."""
    classes = 54
    kernel, bias, per_class = (np.resize(a, (*a.shape[:-1], classes)) for a in (KERNEL, BIAS, PER_CLASS))
    labels = np.resize(LABELS, (B, classes))[:8]
    fused, _, per_class_name, options = FAMILY[name]

    def loss(features, kernel, bias, per_class, labels):
        return fused(
            features, kernel, labels, bias=bias, **{per_class_name: per_class}, chunk_size=18, reduction="sum",
            **options,
        )  # fmt: skip

    arguments = (FEATURES[:8], kernel, bias, per_class, labels)
    expected = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*arguments)
    mesh = devices.mesh(axis_type)
    specs = (P("data"), P(None, "model"), P("model"), P("model"), P("data"))
    sharded = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(arguments, specs, strict=True)]
    with set_mesh(mesh):
        value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(*sharded)
    np.testing.assert_allclose(value, expected[0], rtol=2e-6)
    for got, want, spec in zip(grads, expected[1], specs[:4], strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
        if axis_type == AxisType.Explicit:
            assert _padded(got.sharding.spec, got.ndim) == _padded(spec, got.ndim)


def _padded(spec, ndim):
    """``spec`` with a None for each trailing axis it leaves out: P("data") is P("data", None)."""
    return tuple(spec) + (None,) * (ndim - len(spec))


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
@pytest.mark.parametrize("name", ["focal-poly-smoothed", "asymmetric-stopped", "bce-poly"])
def test_linear_update_equals_optax_on_the_materialised_gradient(name, layout):
    """linear_update with each loss: its loss and features gradient, and Adam's step on the materialised gradient
    of the head (parameters and state), in the kernel's own layout."""
    fused, _, per_class_name, options = FAMILY[name]
    kernel = KERNEL.T if layout == "out_in" else KERNEL
    params = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(BIAS)}
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)
    arguments = {per_class_name: PER_CLASS, "reduction": "batchmean", "chunk_size": 16, "kernel_layout": layout}
    loss, features_grad, new_params, new_state = jaxbce.linear_update(
        fused, FEATURES, params, state, positives=POSITIVES, optimizer=optimizer, **arguments, **options
    )

    def objective(features, params):
        return fused(features, params["kernel"], positives=POSITIVES, bias=params["bias"], **arguments, **options)

    expected_loss, (expected_features_grad, grads) = jax.value_and_grad(objective, argnums=(0, 1))(FEATURES, params)
    updates, expected_state = optimizer.update(grads, state, params)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    np.testing.assert_allclose(features_grad, expected_features_grad, rtol=2e-5, atol=1e-7)
    expected = jax.tree.leaves((optax.apply_updates(params, updates), expected_state))
    for got, want in zip(jax.tree.leaves((new_params, new_state)), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_linear_update_of_the_bce_is_the_bce_update_and_options_are_checked():
    params = {"kernel": jnp.asarray(KERNEL), "bias": jnp.asarray(BIAS)}
    optimizer = optax.sgd(0.1)
    state = optimizer.init(params)
    common = {"positives": POSITIVES, "optimizer": optimizer, "pos_weight": PER_CLASS, "label_smoothing": 0.1}
    generic = jaxbce.linear_update(jaxbce.linear_binary_cross_entropy, FEATURES, params, state, **common)
    specific = jaxbce.linear_binary_cross_entropy_update(FEATURES, params, state, **common)
    for got, want in zip(jax.tree.leaves(generic), jax.tree.leaves(specific), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match=r"linear_asymmetric_loss takes no options \['gamma'\]"):
        jaxbce.linear_update(
            jaxbce.linear_asymmetric_loss, FEATURES, params, state, LABELS, optimizer=optimizer, gamma=2.0
        )
    with pytest.raises(TypeError, match="loss must be one of"):
        jaxbce.linear_update(jaxbce.sigmoid_focal_loss, FEATURES, params, state, LABELS, optimizer=optimizer)
    with pytest.raises(ValueError, match="alpha must be in"):
        jaxbce.linear_update(
            jaxbce.linear_sigmoid_focal_loss, FEATURES, params, state, LABELS, optimizer=optimizer, alpha=2.0
        )
