"""The elementwise cores: accuracy against mpmath, exactness at 0, limits, and derivatives of every order."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import reference
from jax_compat import enable_x64
from jaxbce import _numerics, binary_cross_entropy_with_logits

LABELS = (0.0, 1.0, 1e-3, 0.05, 0.3, 0.5, 0.7, 0.95, 1 - 1e-3)

# Bounds in eps of the dtype, the contract's (docs/contract.md, "Accuracy"): (loss, logits gradient)
# with plain labels and with pos_weight or label_smoothing; float64 is held to the same bounds in its own eps.
BOUNDS = {"plain": (1.5, 1.5), "extra": (2.5, 2.5)}
# (pos_weight, label_smoothing) settings: plain, and three that use the looser "extra" bound.
SETTINGS = ((1.0, 0.0), (3.0, 0.0), (0.3, 0.0), (1.0, 0.1))


@functools.cache
def _reference(dtype, pos_weight, label_smoothing):
    logits = reference.logit_grid(dtype)
    grid_x = np.repeat(logits[None, :], len(LABELS), axis=0)
    grid_y = np.repeat(np.array(LABELS, dtype)[:, None], len(logits), axis=1)
    return (
        grid_x,
        grid_y,
        reference.bce_with_logits(grid_x, grid_y, pos_weight=pos_weight, label_smoothing=label_smoothing),
    )


def _loss_and_grad(x, y, pos_weight, label_smoothing):
    kwargs = {"label_smoothing": label_smoothing}
    if pos_weight != 1.0:
        kwargs["pos_weight"] = jnp.asarray(pos_weight, x.dtype)

    def total(logits):
        return binary_cross_entropy_with_logits(logits, y, reduction="sum", **kwargs)

    loss = binary_cross_entropy_with_logits(x, y, reduction="none", **kwargs)
    return np.asarray(loss), np.asarray(jax.grad(total)(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("pos_weight", "label_smoothing"), SETTINGS)
def test_accuracy_against_mpmath(dtype, pos_weight, label_smoothing):
    """Loss and logits gradient against 50-digit mpmath over logits in [-1e4, 1e4] and the contract's labels."""
    x, y, (ref_loss, ref_grad, ref_scale) = _reference(dtype, pos_weight, label_smoothing)
    with enable_x64(dtype == np.float64):
        loss, grad = _loss_and_grad(jnp.asarray(x, dtype), jnp.asarray(y, dtype), pos_weight, label_smoothing)
    plain = pos_weight == 1.0 and label_smoothing == 0.0
    loss_bound, grad_bound = BOUNDS["plain" if plain else "extra"]
    loss_error = reference.eps_error(loss, ref_loss, dtype=dtype)
    # Hard labels: relative error; soft (or smoothed) labels: relative to max(|grad|, sigmoid(x), |y|).
    hard = np.isin(y, (0.0, 1.0)) & (label_smoothing == 0.0)
    grad_error = np.where(
        hard,
        reference.eps_error(grad, ref_grad, dtype=dtype),
        reference.eps_error(grad, ref_grad, ref_scale, dtype=dtype),
    )
    assert loss_error.max() <= loss_bound, (loss_error.max(), x.ravel()[loss_error.argmax()])
    assert grad_error.max() <= grad_bound, (grad_error.max(), x.ravel()[grad_error.argmax()])


def test_saturated_tail_gradient_is_not_zero():
    """Where sigmoid(x) rounds to 1 in float32 the gradient for y = 1 is -sigmoid(-x), not 0."""
    x = jnp.array([20.0, 40.0, 80.0], jnp.float32)
    grad = jax.grad(lambda v: binary_cross_entropy_with_logits(v, jnp.ones(3), reduction="sum"))(x)
    expected = -np.exp(-np.array([20.0, 40.0, 80.0]))  # float64 reference: sigmoid(-x) = exp(-x)/(1+exp(-x))
    expected = expected / (1 - expected)
    np.testing.assert_allclose(grad, expected, rtol=2e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("label", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1e-3])
def test_gradient_at_zero_is_half_minus_label_exactly(dtype, label):
    y = jnp.asarray(label, dtype)
    grad = jax.grad(binary_cross_entropy_with_logits)(jnp.zeros((), dtype), y)
    assert grad.dtype == dtype
    expected = (jnp.asarray(0.5, jnp.float32) - y.astype(jnp.float32)).astype(dtype)  # one rounding
    assert grad == expected


@pytest.mark.parametrize("label", [0.0, 0.3, 1.0])
def test_hessian_at_zero_is_a_quarter(label):
    hessian = jax.hessian(lambda x: binary_cross_entropy_with_logits(x, label))(0.0)
    assert hessian == 0.25
    with enable_x64(True):
        x = jnp.zeros((), jnp.float64)
        assert jax.hessian(lambda v: binary_cross_entropy_with_logits(v, label))(x) == 0.25
        third = jax.jacfwd(jax.hessian(lambda v: binary_cross_entropy_with_logits(v, label)))(x)
        assert third == 0.0  # sigmoid'' is odd about 0


def test_limits_at_infinite_logits():
    inf = jnp.inf
    x = jnp.array([inf, inf, -inf, -inf, inf, -inf])
    y = jnp.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    loss = binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_array_equal(loss, [0.0, inf, 0.0, inf, inf, inf])
    grad = jax.grad(lambda v: binary_cross_entropy_with_logits(v, y, reduction="sum"))(x)
    np.testing.assert_array_equal(grad, [0.0, 1.0, 0.0, -1.0, 0.5, -0.5])
    pw = jnp.array([0.0, 2.0, 2.0, 2.0, 2.0, 0.0])
    loss_pw = binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none")
    assert not np.isnan(loss_pw).any()
    grads = jax.grad(
        lambda v, w: binary_cross_entropy_with_logits(v, y, pos_weight=w, reduction="sum"), argnums=(0, 1)
    )(x, pw)
    assert not any(np.isnan(g).any() for g in grads)


def test_nan_propagates():
    x = jnp.array([jnp.nan, 1.0, 1.0, -jnp.nan])
    y = jnp.array([1.0, jnp.nan, 0.0, 0.0])
    loss = binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_array_equal(np.isnan(loss), [True, True, False, True])
    grad = jax.grad(lambda v: binary_cross_entropy_with_logits(v, y, reduction="sum"))(x)
    np.testing.assert_array_equal(np.isnan(grad), [True, True, False, True])
    assert np.isnan(binary_cross_entropy_with_logits(x, y))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_check_grads_every_argument_to_second_order(label_smoothing):
    """Forward and reverse mode, first and second order, in float64, for logits, labels, weight, pos_weight."""
    rng = np.random.default_rng(0)
    with enable_x64(True):
        x = jnp.asarray(rng.normal(scale=3.0, size=(3, 4)))
        y = jnp.asarray(rng.uniform(0.05, 0.95, size=(3, 4)))
        w = jnp.asarray(rng.uniform(0.5, 2.0, size=(3, 4)))
        pw = jnp.asarray(rng.uniform(0.5, 3.0, size=(4,)))

        def loss(x, y, w, pw):
            return binary_cross_entropy_with_logits(
                x, y, weight=w, pos_weight=pw, label_smoothing=label_smoothing, reduction="sum"
            )

        check_grads(loss, (x, y, w, pw), order=2, modes=("fwd", "rev"), eps=1e-4)
        check_grads(
            lambda x, y: binary_cross_entropy_with_logits(x, y, label_smoothing=label_smoothing),
            (x, y),
            order=2,
            modes=("fwd", "rev"),
            eps=1e-4,
        )


def test_hessian_matches_closed_form():
    """d2/dx2 = (pw*y + 1 - y) * sigmoid(x) * sigmoid(-x) (float64 reference)."""
    with enable_x64(True):
        x = jnp.linspace(-40.0, 40.0, 81)
        y, pw = 0.3, 2.5

        def total(v):
            return binary_cross_entropy_with_logits(v, jnp.full_like(v, y), pos_weight=pw, reduction="sum")

        hessian_diagonal = jnp.diag(jax.hessian(total)(x))
        sig_pos, sig_neg = 1 / (1 + np.exp(-np.asarray(x))), 1 / (1 + np.exp(np.asarray(x)))
        np.testing.assert_allclose(hessian_diagonal, (pw * y + 1 - y) * sig_pos * sig_neg, rtol=1e-14)


def test_softplus_and_sigmoid_helpers():
    """The stable helpers against float64 NumPy references, and their derivatives."""
    x32 = np.linspace(-100, 100, 4001, dtype=np.float32)
    x64 = x32.astype(np.float64)
    tolerance = {"rtol": 2 * 2**-23, "atol": np.finfo(np.float32).tiny}  # XLA may flush subnormals
    np.testing.assert_allclose(_numerics.softplus(x32), np.logaddexp(x64, 0), **tolerance)
    sig = np.exp(-np.logaddexp(0, -x64))
    np.testing.assert_allclose(_numerics.sigmoid(x32), sig, **tolerance)
    np.testing.assert_allclose(jax.vmap(jax.grad(_numerics.softplus))(x32), sig, **tolerance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_sigmoid_pair_is_within_a_tenth_of_an_eps(dtype):
    """sigmoid(-|x|) as a double-word pair, against 50-digit mpmath, where the pair's low part is normal
    (sigmoid >= 2**p * tiny; below, the pair degrades towards one number of the dtype)."""
    x = -np.abs(reference.logit_grid(dtype, dense=401, log_points=300, tail=241))
    with enable_x64(dtype == np.float64):
        hi, lo = (np.asarray(v) for v in jax.jit(_numerics.sigmoid_pair)(x))
    worst = 0.0
    for xi, h, low in zip(x, hi, lo, strict=True):
        exact = reference.sigmoid_exact(xi)
        if exact >= 2.0 ** (np.finfo(dtype).nmant + 1) * np.finfo(dtype).tiny:
            got = reference.mpmath.mpf(float(h)) + float(low)
            worst = max(worst, float(abs(got - exact) / exact) / np.finfo(dtype).eps)
    assert worst <= 0.1, worst
