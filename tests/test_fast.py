"""Every public function once, for the edit-test loop (`make test-fast`: this module in an 8-device session and in
a one-device one): its value and gradient against an independent computation, and in the 8-device session the same
call with its arguments sharded over a mesh. The whole suite (`make test`) checks each far more widely."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import devices
import jaxbce
import reference
from jax_compat import set_mesh

RNG = np.random.default_rng(0)
B, D, C = 8, 6, 37  # C prime: the last chunk is partial
LOGITS = RNG.normal(size=(B, C)).astype(np.float32) * 3
LABELS = (RNG.uniform(size=(B, C)) < 0.3).astype(np.float32)
FEATURES = RNG.normal(size=(B, D)).astype(np.float32)
KERNEL = RNG.normal(size=(D, C)).astype(np.float32) / 3
BIAS = RNG.normal(size=(C,)).astype(np.float32)


def _float64(name, x, y, **options):
    """The float64 closed form's mean loss and its gradient in ``x`` (tests/reference.py)."""
    ref = reference.float64_loss_and_gradient(name, tuple(options.items()), x, y, 1.0, 1.0)
    return ref.loss.mean(), ref.grad / x.size


ELEMENTWISE = {
    "binary_cross_entropy_with_logits": ({}, LOGITS),
    "binary_cross_entropy": ({}, jax.nn.sigmoid(LOGITS)),
    "sigmoid_focal_loss": ({"alpha": 0.25, "gamma": 2.0}, LOGITS),
    "asymmetric_loss": ({"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05}, LOGITS),
    "binary_entropy": ({}, LOGITS),
    "binary_kl_divergence": ({}, LOGITS),
}


def _elementwise(name):
    options, first = ELEMENTWISE[name]
    first = np.asarray(first, np.float32)
    second = LOGITS[::-1] if name == "binary_kl_divergence" else LABELS
    arguments = (first,) if name == "binary_entropy" else (first, second)
    function = functools.partial(getattr(jaxbce, name), **options)
    expected = _float64(name, first.astype(np.float64), second.astype(np.float64), **options)
    return function, arguments, expected, 2e-5


def _linear_family(name, elementwise_name, **options):
    def make():
        function = functools.partial(getattr(jaxbce, name), chunk_size=16, **options)
        logits = FEATURES.astype(np.float64) @ KERNEL + BIAS
        loss, d_logits = _float64(elementwise_name, logits, LABELS.astype(np.float64), **options)
        return (
            lambda f, k, y: function(f, k, y, bias=BIAS),
            (FEATURES, KERNEL, LABELS),
            (loss, d_logits @ KERNEL.T),
            2e-5,
        )

    return make


def _contrastive():
    images, texts = FEATURES / np.linalg.norm(FEATURES, axis=1, keepdims=True), FEATURES[::-1] / 2
    function = functools.partial(jaxbce.sigmoid_contrastive_loss, logit_scale=10.0, logit_bias=-3.0)
    logits = 10.0 * images.astype(np.float64) @ texts.T.astype(np.float64) - 3.0
    signs = 2 * np.eye(B) - 1
    loss = np.sum(np.logaddexp(0, -signs * logits)) / B
    d_logits = -signs / (1 + np.exp(signs * logits)) / B
    return function, (images, texts), (loss, 10.0 * d_logits @ texts), 2e-5


def _update():
    params = {"kernel": jnp.asarray(KERNEL), "bias": jnp.asarray(BIAS)}
    optimizer = optax.adam(1e-2)
    step = functools.partial(jaxbce.linear_binary_cross_entropy_update, optimizer=optimizer, chunk_size=16)
    loss_fn = lambda p: jaxbce.binary_cross_entropy_with_logits(FEATURES @ p["kernel"] + p["bias"], LABELS)  # noqa: E731
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = optimizer.update(grads, optimizer.init(params), params)
    return step, params, optimizer.init(params), (loss, optax.apply_updates(params, updates), state)


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_loss(name):
    function, arguments, (loss, grad), rtol = _elementwise(name)
    value, got = jax.value_and_grad(function)(*arguments)
    np.testing.assert_allclose(value, loss, rtol=rtol)
    np.testing.assert_allclose(got, grad, rtol=1e-4, atol=1e-9)
    if devices.DEVICES >= 8:
        mesh = devices.mesh()
        with set_mesh(mesh):
            # over the examples: C = 37 is prime, and a sharded axis must divide evenly
            sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in arguments]
            value, got = jax.jit(jax.value_and_grad(function))(*sharded)
        np.testing.assert_allclose(value, loss, rtol=rtol)
        assert got.sharding.spec[0] == "data"


FUSED = {
    "linear_binary_cross_entropy": _linear_family("linear_binary_cross_entropy", "binary_cross_entropy_with_logits"),
    "linear_sigmoid_focal_loss": _linear_family(
        "linear_sigmoid_focal_loss", "sigmoid_focal_loss", alpha=0.25, gamma=2.0
    ),
    "linear_asymmetric_loss": _linear_family(
        "linear_asymmetric_loss", "asymmetric_loss", gamma_pos=0.0, gamma_neg=4.0, clip=0.05
    ),
    "sigmoid_contrastive_loss": _contrastive,
}


@pytest.mark.parametrize("name", list(FUSED))
def test_blockwise_loss(name):
    make = FUSED[name]
    function, arguments, (loss, d_first), rtol = make()
    value, got = jax.value_and_grad(function)(*arguments)
    np.testing.assert_allclose(value, loss, rtol=rtol)
    np.testing.assert_allclose(got, d_first, rtol=1e-4, atol=1e-7)
    if devices.DEVICES >= 8 and name != "sigmoid_contrastive_loss":
        mesh = devices.mesh()
        specs = (P("data"), P(), P("data"))  # the examples sharded (C = 37 classes cannot be split evenly)
        with set_mesh(mesh):
            sharded = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(arguments, specs, strict=True)]
            value, got = jax.jit(jax.value_and_grad(function))(*sharded)
        np.testing.assert_allclose(value, loss, rtol=rtol)
        assert got.sharding.spec[0] == "data"


def test_update():
    step, params, state, (loss, expected_params, expected_state) = _update()
    value, _, new_params, new_state = step(FEATURES, params, state, LABELS)
    np.testing.assert_allclose(value, loss, rtol=2e-5)
    got, expected = jax.tree.leaves((new_params, new_state)), jax.tree.leaves((expected_params, expected_state))
    for got_leaf, expected_leaf in zip(got, expected, strict=True):
        np.testing.assert_allclose(got_leaf, expected_leaf, rtol=2e-5, atol=1e-7)


def test_linear_update_of_the_focal_loss():
    params = {"kernel": jnp.asarray(KERNEL), "bias": jnp.asarray(BIAS)}
    optimizer = optax.sgd(0.1)
    loss, _, new_params, _ = jaxbce.linear_update(
        jaxbce.linear_sigmoid_focal_loss, FEATURES, params, optimizer.init(params), LABELS, optimizer=optimizer
    )
    expected_loss, grads = jax.value_and_grad(
        lambda p: jaxbce.sigmoid_focal_loss(FEATURES @ p["kernel"] + p["bias"], LABELS)
    )(params)
    np.testing.assert_allclose(loss, expected_loss, rtol=2e-5)
    np.testing.assert_allclose(new_params["kernel"], params["kernel"] - 0.1 * grads["kernel"], rtol=1e-5, atol=1e-7)


def test_weights_and_checks():
    positives, totals = np.array([5.0, 0.0, 20.0]), np.array([10.0, 10.0, 50.0])
    np.testing.assert_allclose(jaxbce.pos_weight_from_counts(positives, totals), [1.0, 1.0, 1.5])  # (n - p) / p
    counts = np.array([5.0, 1.0, 20.0])
    effective = (1 - 0.9**counts) / (1 - 0.9)  # Cui et al.: weights proportional to 1 / the effective number
    got = jaxbce.class_balanced_weights(counts, beta=0.9)
    np.testing.assert_allclose(got, 3 * (1 / effective) / np.sum(1 / effective), rtol=1e-5)  # sums to the classes
    bad = LABELS.copy()
    bad[0, 0] = 2.0
    with pytest.raises(checkify.JaxRuntimeError, match="labels must be in"):
        jaxbce.checked(jaxbce.binary_cross_entropy_with_logits)(LOGITS, bad)
    step = jax.jit(checkify.checkify(lambda x, y: jaxbce.binary_cross_entropy_with_logits(x, y)))
    with jaxbce.value_checks():
        error, _ = step(LOGITS, bad)
    assert "labels must be in" in error.get()


def test_predictions_and_metrics():
    """linear_top_k against lax.top_k of the logits; the metrics against their formulas (P@k: the hits among
    the top k over k; nDCG@k: DCG over the ideal DCG); propensity_scores against Jain et al.'s formula."""
    scores, indices = jaxbce.linear_top_k(FEATURES, KERNEL, 5, bias=BIAS, chunk_size=16)
    expected = jax.lax.top_k(FEATURES @ KERNEL + BIAS, 5)
    np.testing.assert_allclose(scores, expected[0], rtol=1e-6)
    np.testing.assert_array_equal(indices, expected[1])
    hits = np.take_along_axis(LABELS, np.asarray(indices), axis=1)
    np.testing.assert_allclose(jaxbce.precision_at_k(indices, LABELS, k=5), hits.sum(axis=1) / 5, rtol=1e-6)
    discounts = 1 / np.log2(np.arange(2, 7))
    ideal = np.array([discounts[: int(min(5, n))].sum() for n in LABELS.sum(axis=1)])
    dcg = (hits * discounts).sum(axis=1)
    expected_ndcg = np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1), 0)
    np.testing.assert_allclose(jaxbce.ndcg_at_k(indices, LABELS, k=5), expected_ndcg, rtol=1e-6)
    counts = LABELS.sum(axis=0)
    c = (np.log(B) - 1) * 2.5**0.55
    expected = 1 / (1 + c * np.exp(-0.55 * np.log(counts + 1.5)))
    np.testing.assert_allclose(jaxbce.propensity_scores(counts, B), expected, rtol=1e-6)


def test_every_public_function_is_here():
    here = {*ELEMENTWISE, *FUSED}
    here |= {"linear_binary_cross_entropy_update", "pos_weight_from_counts", "class_balanced_weights"}
    here |= {
        "checked",
        "value_checks",
        "linear_update",
        "linear_top_k",
        "precision_at_k",
        "ndcg_at_k",
        "propensity_scores",
    }
    assert here == set(jaxbce.__all__)
