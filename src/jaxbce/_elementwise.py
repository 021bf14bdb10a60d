"""The elementwise cores of the binary cross-entropy losses, the entropy and the KL divergence, each a
``jax.custom_jvp`` function of arrays already checked, broadcast and cast to the compute dtype by the
pipeline, with its rule right under it (:func:`jaxbce._numerics.define_partials`). The focal loss, which needs
double-word arithmetic, is in ``_focal``; the shared numerics are in ``_numerics``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbce._numerics import (
    define_partials,
    in_tail,
    neg_abs,
    opaque_constants,
    sigmoid_difference,
    sigmoid_nonpositive,
    sigmoids,
    smoothed_labels,
    softplus,
    softplus_nonpositive,
    softplus_of_abs_fusible,
    times,
    weighted,
)


def bce_coefficients(x, y, pos_weight, label_smoothing):
    """(a, c) with loss = a * |x| + c * softplus(-|x|), for the smoothed labels.

    softplus(x) = max(x, 0) + softplus(-|x|) and softplus(-x) = max(-x, 0) + softplus(-|x|), so the loss
    pw*y*softplus(-x) + (1-y)*softplus(x) has a = 1 - y for x > 0, a = pw*y for x <= 0 and c = pw*y + 1 - y.
    Without pos_weight and smoothing c is exactly 1 (None).
    """
    positive, negative = smoothed_labels(y, label_smoothing)
    if pos_weight is not None:
        positive = pos_weight * positive
    a = jnp.where(x > 0, negative, positive)
    c = None if pos_weight is None and label_smoothing == 0 else positive + negative
    return a, c


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def bce_with_logits(x: jax.Array, y: jax.Array, pos_weight: jax.Array | None, label_smoothing: float) -> jax.Array:
    """pw*y*softplus(-x) + (1-y)*softplus(x) (labels smoothed by the static ``label_smoothing``) as a sum of
    non-negative terms (for y in [0, 1], pw >= 0)."""
    nx = neg_abs(x)
    c = bce_coefficients(x, y, pos_weight, label_smoothing)[1]
    positive, negative = smoothed_labels(y, label_smoothing)
    # pw * (y * |x|), not (pw * y) * |x|: a tiny pos_weight times a label can be subnormal (flushed to 0)
    # where the whole term is a normal number.
    positive_term = weighted(positive, -nx)
    if pos_weight is not None:
        positive_term = weighted(pos_weight, positive_term)
    linear = jnp.where(x > 0, weighted(negative, -nx), positive_term)
    return linear + softplus_nonpositive(nx, c)


@define_partials(bce_with_logits)
def _bce_with_logits_partials(label_smoothing, x, y, pos_weight):
    def d_logits():
        # For x > 0 the derivative is (1-y) - c*sigmoid(-x), for x <= 0 it is c*sigmoid(x) - pw*y: with
        # s = sigmoid(-|x|) both are +-(a - c*s), and neither cancels when y is 0 or 1 (for y = 1, x > 0 it
        # is -c*s exactly, not the 1 - 1 that sigmoid(x) - y rounds to in the tail).
        a, c = bce_coefficients(x, y, pos_weight, label_smoothing)
        d = sigmoid_difference(neg_abs(x), a, c)
        return jnp.where(x > 0, -d, d)

    def d_labels():
        # d/dy_s times dy_s/dy = 1 - s; without pos_weight d/dy_s = softplus(-x) - softplus(x) = -x exactly.
        d = -x if pos_weight is None else weighted(pos_weight, softplus(-x)) - softplus(x)
        return d if label_smoothing == 0 else d * (1 - label_smoothing)

    def d_pos_weight():
        return weighted(smoothed_labels(y, label_smoothing)[0], softplus(-x))

    return d_logits, d_labels, d_pos_weight


def bce_with_logits_fusible(
    x: jax.Array, y: jax.Array, pos_weight: jax.Array | None, label_smoothing: float
) -> jax.Array:
    """The value of :func:`bce_with_logits` in operations that XLA:CPU fuses into a sum
    (:func:`jaxbce._numerics.softplus_of_abs_fusible`), for the sums of ``_reductions.sum_terms``: no derivative.

    ``(1-y) max(x, 0) + pw y max(-x, 0)`` is ``a |x|`` exactly (one of the two is 0). An infinite logit against a
    zero coefficient is ``0 * inf = NaN`` here, where :func:`bce_with_logits` gives 0: the NaN sends the sum to
    the exact evaluation. Where exp(-|x|) is subnormal (|x| > 87.3; XLA flushes it to 0), ``c * exp(-|x|)``
    with ``c = pw y + 1 - y > 1`` is 0 rather than a number below ``c * 2**-126``; :func:`bce_with_logits`
    scales before it rounds. Elsewhere each term is within the contract's bounds.
    """
    zero, one = opaque_constants(x.dtype, 0, 1)
    positive, negative = smoothed_labels(y, label_smoothing, one)
    positive_term = positive * jnp.maximum(-x, zero)
    c = None
    if pos_weight is not None:
        positive_term = pos_weight * positive_term
        positive = pos_weight * positive
    if pos_weight is not None or label_smoothing != 0:
        c = positive + negative
    linear = negative * jnp.maximum(x, zero) + positive_term
    return linear + times(c, softplus_of_abs_fusible(jnp.abs(x)))


# PyTorch's BCELoss clamps each log at -100 and divides its gradient by max(p * (1 - p), 1e-12).
_LOG_FLOOR = -100.0
_PROBABILITY_GRADIENT_FLOOR = 1e-12


def _clamped_logs(p: jax.Array) -> tuple[jax.Array, jax.Array]:
    # XLA's log1p(-p) is off by up to 1.5 eps (float32) and 120 eps (float64) for p in [0.35, 0.5]. From
    # p = 0.3 on, log(1 - p) is taken as log(hi) + lo / hi with 1 - p = hi + lo exactly (lo is the rounding
    # error of hi = 1 - p; 0 for p >= 1/2, where the subtraction is exact).
    hi = 1 - p
    lo = (1 - hi) - p
    correction = jnp.where(lo == 0, 0, lo / jnp.where(hi == 0, 1, hi))  # 0 / 0 at p = 1 would be NaN
    log_not_p = jnp.where(p >= 0.3, jnp.log(hi) + correction, jnp.log1p(-p))
    return jnp.maximum(jnp.log(p), _LOG_FLOOR), jnp.maximum(log_not_p, _LOG_FLOOR)


def _clamped_logs_fusible(p: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The same logs in operations that XLA:CPU fuses into a sum (no select): log(1 - p) as log(hi) + lo / hi for
    # every p, with lo the rounding error of hi = 1 - p (for p < 2**-25, hi = 1 and the value is -p, which is
    # log1p(-p) to rounding). At p = 1, lo = 0 and the divisor is kept off 0 by the max.
    one, tiny, floor = opaque_constants(p.dtype, 1, np.finfo(p.dtype).tiny, _LOG_FLOOR)
    hi = one - p
    lo = (one - hi) - p
    log_not_p = jnp.log(hi) + lo / jnp.maximum(hi, tiny)
    return jnp.maximum(jnp.log(p), floor), jnp.maximum(log_not_p, floor)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def bce_with_probabilities(
    p: jax.Array, y: jax.Array, pos_weight: jax.Array | None, label_smoothing: float
) -> jax.Array:
    """-(pw*y*max(log p, -100) + (1-y)*max(log(1-p), -100)): PyTorch ``BCELoss`` (with a positive-term weight), as
    a sum of same-sign terms."""
    positive, negative = smoothed_labels(y, label_smoothing)
    log_p, log_not_p = _clamped_logs(p)
    positive_term = positive * log_p
    if pos_weight is not None:
        positive_term = weighted(pos_weight, positive_term)
    return -(positive_term + negative * log_not_p)


def bce_with_probabilities_fusible(
    p: jax.Array, y: jax.Array, pos_weight: jax.Array | None, label_smoothing: float
) -> jax.Array:
    """The value of :func:`bce_with_probabilities` in operations that XLA:CPU fuses into a sum, for the sums of
    ``_reductions.sum_terms``: no derivative. The logs are clamped as there, so no term is infinite."""
    positive, negative = smoothed_labels(y, label_smoothing, *opaque_constants(p.dtype, 1))
    log_p, log_not_p = _clamped_logs_fusible(p)
    positive_term = positive * log_p
    if pos_weight is not None:
        positive_term = pos_weight * positive_term
    return -(positive_term + negative * log_not_p)


@define_partials(bce_with_probabilities)
def _bce_with_probabilities_partials(label_smoothing, p, y, pos_weight):
    positive, negative = smoothed_labels(y, label_smoothing)
    if pos_weight is not None:
        positive = pos_weight * positive

    def d_probabilities():
        # (1 - y) / (1 - p) - pw*y / p, PyTorch's (p - y) / max(p (1 - p), 1e-12) for pw = 1. Above the floor
        # as that difference of same-sign terms, whose derivatives are sums of same-sign terms (the quotient
        # rule on (p - y) / (p (1 - p)) cancels near p = 0 and 1, where its second derivative loses every digit
        # in float32); at the floor as PyTorch's ((1 - y) p - pw*y (1 - p)) / 1e-12, finite on all of [0, 1].
        floored = p * (1 - p) <= _PROBABILITY_GRADIENT_FLOOR
        safe_p = jnp.where(floored, 0.5, p)  # keeps the branch not taken, and its derivatives, finite
        above_floor = negative / (1 - safe_p) - positive / safe_p
        return jnp.where(floored, (negative * p - positive * (1 - p)) / _PROBABILITY_GRADIENT_FLOOR, above_floor)

    def d_labels():
        log_p, log_not_p = _clamped_logs(p)
        if pos_weight is not None:
            log_p = pos_weight * log_p
        return (log_not_p - log_p) * (1 - label_smoothing)

    def d_pos_weight():
        return -smoothed_labels(y, label_smoothing)[0] * _clamped_logs(p)[0]

    return d_probabilities, d_labels, d_pos_weight


@jax.custom_jvp
def binary_entropy(x: jax.Array) -> jax.Array:
    """H(sigmoid(x)) = sigmoid(-|x|) * |x| + softplus(-|x|) in nats: two non-negative terms, symmetric in x."""
    nx = neg_abs(x)
    return _abs_x_sigmoid(x) + softplus_nonpositive(nx)


def binary_entropy_fusible(x: jax.Array) -> jax.Array:
    """The value of :func:`binary_entropy` in operations that XLA:CPU fuses into a sum, for the sums of
    ``_reductions.sum_terms``: no derivative. ``|x| * sigmoid(-|x|)`` is 0 rather than a number below ``|x| * 2**-126``
    where ``sigmoid(-|x|)`` is subnormal (|x| > 87.3; XLA flushes it), and NaN at |x| = inf (``inf * 0``)."""
    ax = jnp.abs(x)
    (one,) = opaque_constants(x.dtype, 1)
    e = jnp.exp(-ax)
    return ax * (e / (one + e)) + softplus_of_abs_fusible(ax)


def _abs_x_sigmoid(x: jax.Array) -> jax.Array:
    # |x| * sigmoid(-|x|), rounded once (normal even where sigmoid(-|x|) alone is subnormal); 0 at |x| = inf.
    nx = neg_abs(x)
    return jnp.where(jnp.isinf(x), 0, sigmoid_nonpositive(nx, -nx))


@define_partials(binary_entropy)
def _binary_entropy_partials(x):
    def d_logits():
        # dH/dx = -x sigmoid(x) sigmoid(-x) = -sign(x) * |x| sigmoid(-|x|) * sigmoid(|x|)
        return jnp.where(x > 0, -1, 1) * _abs_x_sigmoid(x) * (1 - sigmoid_nonpositive(neg_abs(x)))

    return (d_logits,)


def _expm1_minus_identity(z: jax.Array) -> jax.Array:
    """expm1(z) - z >= 0: Taylor series z**2 * sum z**n / (n + 2)! for |z| < 2, exp(z) - 1 - z beyond (where
    it cancels by less than a factor 1.7)."""
    degree = 12 if z.dtype == np.float32 else 22  # truncation below 0.05 eps on |z| < 2
    series = jnp.asarray(1 / math.factorial(degree + 2), z.dtype)
    for n in range(degree - 1, -1, -1):
        series = series * z + 1 / math.factorial(n + 2)
    return jnp.where(jnp.abs(z) < 2, z * z * series, jnp.exp(z) - 1 - z)


# exp of arguments beyond this magnifies the rounding of d = x - t; there the direct form
# sp(x) - sp(t) - sigmoid(t) * d cancels by less than a factor 2.5 (and never overflows).
_KL_EXPONENT_LIMIT = 4.0


@jax.custom_jvp
def binary_kl_divergence(x: jax.Array, t: jax.Array) -> jax.Array:
    """KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(x))) = sp(x) - sp(t) - sigmoid(t) * (x - t).

    The divergence is unchanged by (x, t) -> (-x, -t); with t <= 0, r = sigmoid(t) <= 1/2 and d = x - t it is
    log((1-r) e^(-r d) + r e^((1-r) d)) = log1p((1-r) E(-r d) + r E((1-r) d)) with E(z) = expm1(z) - z >= 0:
    a log1p of non-negative terms, so KL >= 0 exactly and KL(x, x) = 0, with no cancellation as d -> 0.
    """
    flip = t > 0
    x, t = jnp.where(flip, -x, x), jnp.where(flip, -t, t)
    d = x - t
    r = sigmoid_nonpositive(t)
    small, large = r * d, (1 - r) * d
    # Products r * c are formed by sigmoid_nonpositive(t, c), rounded once: r alone is subnormal (and
    # flushed to 0) for t < -87 in float32 while r * c can still be a normal number.
    near = jnp.log1p((1 - r) * _expm1_minus_identity(-small) + sigmoid_nonpositive(t, _expm1_minus_identity(large)))
    # In the tail of t, softplus(t) = r to rounding, so -softplus(t) - r * d = r * (-1 - d), rounded once.
    rest = jnp.where(in_tail(t), sigmoid_nonpositive(t, -1 - d), -softplus(t) - sigmoid_nonpositive(t, d))
    # x = +inf against a finite t is +inf (sp(x) - r * d would read inf - inf); t = -inf is q = 0: sp(x).
    far = jnp.where(jnp.isposinf(x), jnp.inf, softplus(x) + rest)
    is_near = jnp.maximum(jnp.abs(small), jnp.abs(large)) <= _KL_EXPONENT_LIMIT
    kl = jnp.where(t == -jnp.inf, softplus(x), jnp.where(is_near, near, far))
    return jnp.where(x == t, 0, kl)


@define_partials(binary_kl_divergence)
def _binary_kl_divergence_partials(x, t):
    def d_logits():
        # sigmoid(x) - sigmoid(t), written with expm1 of a non-positive argument (no cancellation as x -> t,
        # no overflow as |x - t| grows); exactly 0 where x == t, infinite ones included. The argument of the
        # branch not taken is replaced by 0 as well: its derivatives are computed too (and multiplied by 0),
        # and exp(t - x) of a large t - x would make them inf * 0 = NaN from the second order on.
        (sigmoid_x, sigmoid_minus_x), (sigmoid_t, sigmoid_minus_t) = sigmoids(x), sigmoids(t)
        above = -sigmoid_x * sigmoid_minus_t * jnp.expm1(jnp.where(x > t, t - x, 0))
        below = sigmoid_t * sigmoid_minus_x * jnp.expm1(jnp.where(x > t, 0, x - t))
        # Both branches are 0 at x == t (expm1(0)); infinite x == t would read inf * 0.
        return jnp.where((x == t) & jnp.isinf(x), 0, jnp.where(x > t, above, below))

    def d_target_logits():
        # -sigmoid(t) sigmoid(-t) (x - t). In the tail of t, sigmoid(|t|) is 1 to rounding and the derivative is
        # -(x - t) sigmoid(-|t|), formed with its coefficient and rounded once: sigmoid(-|t|) alone is subnormal
        # (and flushed to 0) for |t| > 87 in float32 while the derivative is not (x = 3e38, t = -95: -1.66e-3).
        # There x - t overflows only where |t| > max / 2, where the derivative is 0 (an infinite x stays inf).
        # Elsewhere the product of the two sigmoids, each exact to rounding. x - t is NaN at infinite x == t.
        d = jnp.where((x == t) & jnp.isinf(x), 0, x - t)
        tail = in_tail(neg_abs(t)) & jnp.isfinite(t)
        sigmoid_t, sigmoid_minus_t = sigmoids(t)
        near = -weighted(sigmoid_t * sigmoid_minus_t, jnp.where(tail, 0, d))
        far = -sigmoid_nonpositive(neg_abs(t), jnp.where(tail & (jnp.isfinite(d) | jnp.isinf(x)), d, 0))
        return jnp.where(tail, far, near)

    return d_logits, d_target_logits
