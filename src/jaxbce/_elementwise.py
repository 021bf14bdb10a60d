"""Stable elementwise cores of the jaxbce losses and their ``jax.custom_jvp`` rules.

Everything here works in logit space on arrays that the pipeline has already checked, broadcast and cast to
the compute dtype (float32, or float64 for float64 inputs). Two building blocks carry the numerics:

* ``softplus(-|x|) = log1p(exp(-|x|))``, which lies in (0, log 2]. For |x| >= 1 XLA's ``log1p`` is accurate
  to 0.5 eps; for |x| < 1 (where XLA's ``log1p`` is off by up to 1.4 eps) it is evaluated as
  ``(log2_hi - |x|/2) + (log2_lo + log(cosh(x/2)))``, a sum of two non-negative parts with no cancellation,
  the second a polynomial in x**2 fitted by ``scripts/fit_softplus_poly.py``.
* ``sigmoid(-|x|) = e / (1 + e)`` with the same ``e = exp(-|x|)``: a quotient of positive numbers, within
  1.35 eps for every x, including the tails where ``sigmoid(x)`` rounds to 1; where its value is the result
  (gradients, ``sigmoid``, the focal factor) it is a double-word pair (``_double_word``) within 0.1 eps.

Every loss is then a sum of non-negative terms in those two quantities, and every rule's tangent is a stable
expression that JAX can differentiate again, so derivatives of every order stay finite and accurate to a few
eps (the measured bounds are in tests/test_elementwise.py and bench/results/accuracy.json).
"""

import fractions
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jaxbce import _double_word as dw

# log(cosh(a / 2)) = z * h(z) with z = a**2 on 0 <= a <= 1, h a polynomial (lowest degree first) fitted in the
# Chebyshev sense at 50 digits by scripts/fit_softplus_poly.py; relative fit error 2.4e-9 and 1.1e-17.
_LOGCOSH_COEFFICIENTS = {
    np.dtype(np.float32): (
        0.1249999997144591484,
        -0.005208319031600537492,
        0.00034710676918925676741,
        -0.000026021895394928214808,
        1.741664477142820844e-6,
    ),
    np.dtype(np.float64): (
        0.12499999999999999872,
        -0.0052083333333330772923,
        0.00034722222221375307222,
        -0.000026351686399050681459,
        2.1356915271160978078e-6,
        -1.8032029921806288717e-7,
        1.5654224420872135664e-8,
        -1.3794305651468050249e-9,
        1.1708485217795581294e-10,
        -7.3107062965190689709e-12,
    ),
}
# log(2) = hi + lo with hi the nearest value of the dtype (the float64 remainder is the classical constant).
_LOG2_SPLIT = {
    np.dtype(np.float32): (
        np.float32(0.6931472),
        np.float32(0.6931471805599453 - float(np.float32(0.6931472))),
    ),
    np.dtype(np.float64): (np.float64(0.6931471805599453), np.float64(2.3190468138462996e-17)),
}


@jax.custom_jvp
def _scaled_exp(nx: jax.Array, scale: jax.Array) -> jax.Array:
    """scale * exp(nx) for nx <= 0, rounded once at the end.

    exp(nx) = m * 2**k1 * 2**k2 with m in [0.7, 1.42] and both powers of two normal numbers, so that
    ``scale * exp(nx)`` is exact to rounding even where exp(nx) alone would be subnormal (and flushed to 0 by
    XLA): with pos_weight > 1 the loss of a hard label can be normal where exp(-|x|) is not.
    """
    u_hi, u_lo, k = dw.reduced_exp(nx)
    return jnp.where(jnp.isnan(nx), nx, dw.times_power_of_two(scale * (1 + (u_hi + u_lo)), k))


@_scaled_exp.defjvp
def _scaled_exp_jvp(primals, tangents):
    (nx, scale), (nx_dot, scale_dot) = primals, tangents
    out = _scaled_exp(nx, scale)
    return out, out * nx_dot + _scaled_exp(nx, jnp.ones_like(scale)) * scale_dot


def _times(coefficient: jax.Array | None, value: jax.Array) -> jax.Array:
    return value if coefficient is None else coefficient * value


def _tail(nx: jax.Array) -> jax.Array:
    # Where exp(nx) < eps / 2, log1p(e) and e / (1 + e) both equal e to rounding.
    return nx < math.log(0.5 * np.finfo(nx.dtype).eps)


def _neg_abs(x: jax.Array) -> jax.Array:
    # -|x| as a select, so that its derivative at 0 is the one-sided +1 rather than sign(0) = 0; the values
    # and derivatives built on it then take the x <= 0 branch at 0, where they are exact (0.5 - y, 0.25).
    return jnp.where(x > 0, -x, x)


def _softplus_nonpositive(nx: jax.Array, coefficient: jax.Array | None = None) -> jax.Array:
    """coefficient * log1p(exp(nx)) for nx <= 0 (coefficient None: 1); NaN passes through."""
    hi, lo = _LOG2_SPLIT[np.dtype(nx.dtype)]
    z = nx * nx
    coefficients = _LOGCOSH_COEFFICIENTS[np.dtype(nx.dtype)]
    h = jnp.asarray(coefficients[-1], nx.dtype)
    for c in coefficients[-2::-1]:
        h = h * z + c
    near_zero = (hi + 0.5 * nx) + (lo + z * h)
    one = jnp.ones_like(nx)
    middle = jnp.log1p(_scaled_exp(nx, one))
    tail = _scaled_exp(nx, one if coefficient is None else coefficient)
    return jnp.where(nx > -1, _times(coefficient, near_zero), jnp.where(_tail(nx), tail, _times(coefficient, middle)))


def _sigmoid_nonpositive(nx: jax.Array, coefficient: jax.Array | None = None) -> jax.Array:
    """coefficient * sigmoid(nx) = coefficient * e / (1 + e) for nx <= 0, sharing e = exp(nx) with
    ``_softplus_nonpositive``."""
    one = jnp.ones_like(nx)
    e = _scaled_exp(nx, one)
    tail = _scaled_exp(nx, one if coefficient is None else coefficient)
    return jnp.where(_tail(nx), tail, _times(coefficient, e / (1 + e)))


def _sigmoid_pair(nx: jax.Array) -> dw.Pair:
    """sigmoid(nx) = e / (1 + e) for nx <= 0 as a pair, within about 0.1 eps: e = e_hi + e_lo and 1 + e =
    d_hi + d_lo are kept exactly, and so is the remainder e_hi - s_hi d_hi of the quotient."""
    *u, k = dw.reduced_exp(nx)
    e, e_lo = dw.times_power_of_two(dw.one_plus(*u), k)
    d, d_lo = dw.fast_two_sum(jnp.ones_like(e), e)
    s = jnp.where(jnp.isnan(nx), nx, e / d)
    product, product_lo = dw.two_product(s, d)
    return s, ((e - product) - product_lo + (e_lo - s * (d_lo + e_lo))) / d


def _sigmoid_difference(nx: jax.Array, a: jax.Array, c: jax.Array | None) -> jax.Array:
    """c * sigmoid(nx) - a for nx <= 0 (c None: 1), with the value of a compensated evaluation and the
    derivatives of the plain one.

    sigmoid(nx) = e / (1 + e) carries three roundings (of e, of 1 + e and of the quotient) that add up to
    1.35 eps; here sigmoid(nx) is a pair (``_sigmoid_pair``) and a is subtracted exactly (TwoSum), so that
    what remains is the rounding of c * sigmoid and of the result.
    """
    plain = _sigmoid_nonpositive(nx, c) - a
    q, q_lo = _sigmoid_pair(nx)
    if c is not None:
        q, q_lo = c * q, c * q_lo
    hi, lo = dw.two_sum(q, -a)
    accurate = jnp.where(_tail(nx), plain, hi + (lo + q_lo))
    # The correction is a few ulps: the sum rounds to ``accurate`` and differentiates as ``plain``.
    return plain + jax.lax.stop_gradient(accurate - plain)


def _zero_times(coefficient: jax.Array, magnitude: jax.Array) -> jax.Array:
    # coefficient * magnitude, taking 0 * inf as 0: a hard label at an infinite logit has a zero term.
    return jnp.where(coefficient == 0, 0, coefficient * magnitude)


def _is_zero(tangent) -> bool:
    return tangent is None or type(tangent) is SymbolicZero


def _sum_tangents(out: jax.Array, terms) -> jax.Array:
    """Sum of ``partial * tangent`` over the tangents that are not symbolic zeros.

    Skipping symbolic zeros matters: a partial derivative may be infinite (d/dy at x = inf), and inf * 0
    would put a NaN into the tangent of an argument that is not being differentiated.
    """
    total = None
    for partial_fn, tangent in terms:
        if _is_zero(tangent):
            continue
        term = partial_fn() * tangent
        total = term if total is None else total + term
    return jnp.zeros_like(out) if total is None else total


@jax.custom_jvp
def softplus(x: jax.Array) -> jax.Array:
    """log(1 + exp(x)), exact to rounding for every x, with derivative sigmoid(x)."""
    return jnp.maximum(x, 0) + _softplus_nonpositive(_neg_abs(x))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return softplus(x), sigmoid(x) * x_dot


def sigmoid(x: jax.Array) -> jax.Array:
    """1 / (1 + exp(-x)) as sigmoid(-|x|) - 0 or -(sigmoid(-|x|) - 1), within 1 eps, tails included."""
    d = _sigmoid_difference(_neg_abs(x), jnp.where(x > 0, 1, 0).astype(x.dtype), None)
    return jnp.where(x > 0, -d, d)


def smoothed_labels(y: jax.Array, label_smoothing: float) -> tuple[jax.Array, jax.Array]:
    """(y_s, 1 - y_s) for the Keras rule y_s = y * (1 - s) + s / 2.

    Each is a sum of two non-negative terms, so 1 - y_s is exact to rounding even where y_s is close to 1
    (forming it as 1 - y_s would cost up to 1 / (1 - y_s) eps).
    """
    if label_smoothing == 0:
        return y, 1 - y
    keep, half = 1 - label_smoothing, 0.5 * label_smoothing
    return y * keep + half, (1 - y) * keep + half


def _bce_coefficients(x, y, pos_weight, label_smoothing):
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
    nx = _neg_abs(x)
    c = _bce_coefficients(x, y, pos_weight, label_smoothing)[1]
    positive, negative = smoothed_labels(y, label_smoothing)
    # pw * (y * |x|), not (pw * y) * |x|: a tiny pos_weight times a label can be subnormal (flushed to 0)
    # where the whole term is a normal number.
    positive_term = _zero_times(positive, -nx)
    if pos_weight is not None:
        positive_term = _zero_times(pos_weight, positive_term)
    linear = jnp.where(x > 0, _zero_times(negative, -nx), positive_term)
    return linear + _softplus_nonpositive(nx, c)


def _bce_with_logits_jvp(label_smoothing, primals, tangents):
    x, y, pos_weight = primals
    x_dot, y_dot, pos_weight_dot = tangents
    out = bce_with_logits(x, y, pos_weight, label_smoothing)

    def d_logits():
        # For x > 0 the derivative is (1-y) - c*sigmoid(-x), for x <= 0 it is c*sigmoid(x) - pw*y: with
        # s = sigmoid(-|x|) both are +-(a - c*s), and neither cancels when y is 0 or 1 (for y = 1, x > 0 it
        # is -c*s exactly, not the 1 - 1 that sigmoid(x) - y rounds to in the tail).
        a, c = _bce_coefficients(x, y, pos_weight, label_smoothing)
        d = _sigmoid_difference(_neg_abs(x), a, c)
        return jnp.where(x > 0, -d, d)

    def d_labels():
        # d/dy_s times dy_s/dy = 1 - s; without pos_weight d/dy_s = softplus(-x) - softplus(x) = -x exactly.
        d = -x if pos_weight is None else _zero_times(pos_weight, softplus(-x)) - softplus(x)
        return d if label_smoothing == 0 else d * (1 - label_smoothing)

    def d_pos_weight():
        return _zero_times(smoothed_labels(y, label_smoothing)[0], softplus(-x))

    terms = ((d_logits, x_dot), (d_labels, y_dot), (d_pos_weight, pos_weight_dot))
    return out, _sum_tangents(out, terms)


bce_with_logits.defjvp(_bce_with_logits_jvp, symbolic_zeros=True)


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


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def bce_with_probabilities(p: jax.Array, y: jax.Array, label_smoothing: float) -> jax.Array:
    """-(y*max(log p, -100) + (1-y)*max(log(1-p), -100)): PyTorch ``BCELoss``, as a sum of same-sign terms."""
    positive, negative = smoothed_labels(y, label_smoothing)
    log_p, log_not_p = _clamped_logs(p)
    return -(positive * log_p + negative * log_not_p)


def _bce_with_probabilities_jvp(label_smoothing, primals, tangents):
    p, y = primals
    p_dot, y_dot = tangents
    out = bce_with_probabilities(p, y, label_smoothing)

    def d_probabilities():
        # PyTorch's gradient, finite on all of [0, 1].
        positive, negative = smoothed_labels(y, label_smoothing)
        return (negative * p - positive * (1 - p)) / jnp.maximum(p * (1 - p), _PROBABILITY_GRADIENT_FLOOR)

    def d_labels():
        log_p, log_not_p = _clamped_logs(p)
        return (log_not_p - log_p) * (1 - label_smoothing)

    return out, _sum_tangents(out, ((d_probabilities, p_dot), (d_labels, y_dot)))


bce_with_probabilities.defjvp(_bce_with_probabilities_jvp, symbolic_zeros=True)


def _power(q: jax.Array, exponent: float) -> jax.Array:
    """q ** exponent for q in [0, 1]: exact to rounding for multiples of 1/2 (repeated products and a square
    root), ``exp(exponent * log q)`` otherwise (error about |exponent * log q| / 2 eps). q = 0 is replaced by
    1 inside, so that derivatives of every order stay finite there; callers select the value at q = 0."""
    whole, fraction = math.floor(exponent), exponent - math.floor(exponent)
    safe = jnp.where(q == 0, 1, q)
    power = jax.lax.integer_pow(safe, whole) if whole else jnp.ones_like(q)
    if fraction == 0.5:
        power = power * jnp.sqrt(safe)
    elif fraction:
        power = power * jnp.exp(fraction * jnp.log(safe))
    return power


def _focal_parts(x, positive, negative, gamma):
    """(1 - p_t)**gamma and gamma * (1 - p_t)**(gamma - 1), with 1 - p_t = y sigmoid(-x) + (1 - y) sigmoid(x)
    a sum of non-negative terms, each exact in its tail."""
    q = positive * sigmoid(-x) + negative * sigmoid(x)
    factor = jnp.where(q == 0, 0.0 if gamma > 0 else 1.0, _power(q, gamma))
    # At q = 0 the derivative factor only ever multiplies q' = 0 (an infinite logit or a subnormal q).
    slope = jnp.where(q == 0, 0, gamma * _power(q, gamma - 1))
    return factor, slope


def _alpha_t(alpha, positive, negative):
    return None if alpha is None else alpha * positive + (1 - alpha) * negative


class _FocalTerms(NamedTuple):
    factor: dw.Pair  # (1 - p_t)**gamma
    d_factor: dw.Pair | None  # its derivative in x (None for gamma = 0)
    d_ce: dw.Pair  # the derivative of bce in x, sigmoid(x) - y_s
    alpha_t: dw.Pair | None


def _focal_terms(x: jax.Array, y: jax.Array, alpha: float | None, gamma: float, label_smoothing: float):
    """The parts of the focal loss and of its derivative in x as pairs (``_double_word``), each within a small
    fraction of an eps.

    Plain arithmetic is not enough here: q = 1 - p_t = y_s sigmoid(-x) + (1 - y_s) sigmoid(x) comes out within
    about 1 eps, and q**gamma multiplies that by gamma (and exp(f log q) by f |log q| for fractional
    exponents). As pairs, the labels 1 - y and y_s are exact, sigmoid is within 0.1 eps, and powers are
    evaluated by ``_double_word.power``; q below the smallest normal number counts as 0.
    """
    dtype = x.dtype
    positive, negative = (y, jnp.zeros_like(y)), dw.fast_two_sum(jnp.ones_like(y), -y)
    if label_smoothing:
        keep = dw.constant(1 - fractions.Fraction(label_smoothing), dtype)
        half = dw.constant(fractions.Fraction(label_smoothing) / 2, dtype)
        positive, negative = dw.add(dw.multiply(keep, y), half), dw.add(dw.multiply(keep, negative), half)
    zero, one = (jnp.zeros_like(x),) * 2, (jnp.ones_like(x), jnp.zeros_like(x))
    small = _sigmoid_pair(_neg_abs(x))  # sigmoid(-|x|)
    large = dw.add(one, dw.negative(small))  # sigmoid(|x|)
    above = x > 0
    sigmoid_x, sigmoid_minus_x = dw.select(above, large, small), dw.select(above, small, large)
    q = dw.add(dw.multiply(positive, sigmoid_minus_x), dw.multiply(negative, sigmoid_x))
    is_zero = q[0] < np.finfo(dtype).tiny
    safe_q = dw.select(is_zero, one, q)
    factor = dw.select(is_zero, zero if gamma else one, dw.power(safe_q, gamma))
    d_factor = None
    if gamma:
        # gamma q**(gamma - 1) q' with q' = (1 - 2 y_s) sigmoid(x) sigmoid(-x); 0 where q is.
        d_q = dw.multiply(dw.add(negative, dw.negative(positive)), dw.multiply(small, large))
        d_factor = dw.multiply(dw.multiply(dw.power(safe_q, gamma - 1), d_q), dw.constant(gamma, dtype))
        d_factor = dw.select(is_zero, zero, d_factor)
    alpha_t = None
    if alpha is not None:
        alpha_t = dw.add(
            dw.multiply(positive, dw.constant(alpha, dtype)),
            dw.multiply(negative, dw.constant(1 - fractions.Fraction(alpha), dtype)),
        )
    return _FocalTerms(factor, d_factor, dw.add(sigmoid_x, dw.negative(positive)), alpha_t)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def sigmoid_focal(x: jax.Array, y: jax.Array, alpha: float | None, gamma: float, label_smoothing: float):
    """alpha_t * (1 - p_t)**gamma * bce(x, y) (torchvision / RetinaNet, soft labels allowed): the product of
    the pair factors (``_focal_terms``) and bce is rounded once."""
    ce = bce_with_logits(x, y, None, label_smoothing)
    terms = _focal_terms(x, y, alpha, gamma, label_smoothing)
    scale = terms.factor if terms.alpha_t is None else dw.multiply(terms.factor, terms.alpha_t)
    # An infinite bce (an infinite logit against its label) times a zero factor is 0.
    return jnp.where(jnp.isinf(ce), _zero_times(scale[0], ce), dw.value(dw.multiply(scale, ce)))


def _sigmoid_focal_jvp(alpha, gamma, label_smoothing, primals, tangents):
    x, y = primals
    x_dot, y_dot = tangents
    out = sigmoid_focal(x, y, alpha, gamma, label_smoothing)
    positive, negative = smoothed_labels(y, label_smoothing)
    ce = bce_with_logits(x, y, None, label_smoothing)
    alpha_t = _alpha_t(alpha, positive, negative)
    factor, slope = _focal_parts(x, positive, negative, gamma) if gamma else (jnp.ones_like(x), None)

    def product_rule(d_q, d_ce):
        # (factor * ce)' = slope * q' * ce + factor * ce', with 0 * inf = 0 on both sides: q' = 0 where ce is
        # infinite (infinite logits), and factor = 0 where ce' is infinite.
        d = _zero_times(factor, d_ce)
        if gamma:
            d = d + _zero_times(slope * d_q(), ce)
        return _times(alpha_t, d)

    def d_logits():
        s = _sigmoid_nonpositive(_neg_abs(x))
        d_ce = jnp.where(x > 0, 1, -1) * (_bce_coefficients(x, y, None, label_smoothing)[0] - s)
        plain = product_rule(lambda: (negative - positive) * s * (1 - s), d_ce)  # q' = (1 - 2y) sig(x) sig(-x)
        # The value from pairs (one rounding at the end), the derivatives of the plain form.
        # Both terms are scaled up by 2**-exponent so that the factor is in [1, 2) (it is at most 1), and
        # neither term is flushed to zero as a subnormal number where the result is a normal one.
        terms = _focal_terms(x, y, alpha, gamma, label_smoothing)
        exponent = jnp.frexp(terms.factor[0])[1].astype(x.dtype) - 1
        d = dw.multiply(dw.times_power_of_two(terms.factor, -exponent), terms.d_ce)
        if gamma:
            d = dw.add(d, dw.multiply(dw.times_power_of_two(terms.d_factor, -exponent), ce))
        if alpha is not None:
            d = dw.multiply(d, terms.alpha_t)
        # ce is infinite at infinite x.
        accurate = jnp.where(jnp.isfinite(x), dw.times_power_of_two(dw.value(d), exponent), plain)
        return plain + jax.lax.stop_gradient(accurate - plain)

    def d_labels():
        # d/dy_s, then dy_s/dy = 1 - s: q' = sigmoid(-x) - sigmoid(x), ce' = -x, alpha_t' = 2 alpha - 1.
        d = product_rule(lambda: sigmoid(-x) - sigmoid(x), -x)
        if alpha is not None:
            d = d + (2 * alpha - 1) * _zero_times(factor, ce)
        return d * (1 - label_smoothing)

    return out, _sum_tangents(out, ((d_logits, x_dot), (d_labels, y_dot)))


sigmoid_focal.defjvp(_sigmoid_focal_jvp, symbolic_zeros=True)


@jax.custom_jvp
def binary_entropy(x: jax.Array) -> jax.Array:
    """H(sigmoid(x)) = sigmoid(-|x|) * |x| + softplus(-|x|) in nats: two non-negative terms, symmetric in x."""
    nx = _neg_abs(x)
    return _abs_x_sigmoid(x) + _softplus_nonpositive(nx)


def _abs_x_sigmoid(x: jax.Array) -> jax.Array:
    # |x| * sigmoid(-|x|), rounded once (normal even where sigmoid(-|x|) alone is subnormal); 0 at |x| = inf.
    nx = _neg_abs(x)
    return jnp.where(jnp.isinf(x), 0, _sigmoid_nonpositive(nx, -nx))


@binary_entropy.defjvp
def _binary_entropy_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    # dH/dx = -x sigmoid(x) sigmoid(-x) = -sign(x) * |x| sigmoid(-|x|) * sigmoid(|x|)
    s = _sigmoid_nonpositive(_neg_abs(x))
    return binary_entropy(x), jnp.where(x > 0, -1, 1) * _abs_x_sigmoid(x) * (1 - s) * x_dot


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
    r = _sigmoid_nonpositive(t)
    small, large = r * d, (1 - r) * d
    # Products r * c are formed by _sigmoid_nonpositive(t, c), rounded once: r alone is subnormal (and
    # flushed to 0) for t < -87 in float32 while r * c can still be a normal number.
    near = jnp.log1p((1 - r) * _expm1_minus_identity(-small) + _sigmoid_nonpositive(t, _expm1_minus_identity(large)))
    # In the tail of t, softplus(t) = r to rounding, so -softplus(t) - r * d = r * (-1 - d), rounded once.
    rest = jnp.where(_tail(t), _sigmoid_nonpositive(t, -1 - d), -softplus(t) - _sigmoid_nonpositive(t, d))
    # x = +inf against a finite t is +inf (sp(x) - r * d would read inf - inf); t = -inf is q = 0: sp(x).
    far = jnp.where(jnp.isposinf(x), jnp.inf, softplus(x) + rest)
    is_near = jnp.maximum(jnp.abs(small), jnp.abs(large)) <= _KL_EXPONENT_LIMIT
    kl = jnp.where(t == -jnp.inf, softplus(x), jnp.where(is_near, near, far))
    return jnp.where(x == t, 0, kl)


def _binary_kl_divergence_jvp(primals, tangents):
    x, t = primals
    x_dot, t_dot = tangents
    out = binary_kl_divergence(x, t)

    def d_logits():
        # sigmoid(x) - sigmoid(t), written with expm1 of a non-positive argument (no cancellation as x -> t,
        # no overflow as |x - t| grows); exactly 0 where x == t, infinite ones included.
        above = -sigmoid(x) * sigmoid(-t) * jnp.expm1(t - x)
        below = sigmoid(t) * sigmoid(-x) * jnp.expm1(x - t)
        return jnp.where(x == t, 0, jnp.where(x > t, above, below))

    def d_target_logits():
        return -_zero_times(sigmoid(t) * sigmoid(-t), x - t)

    return out, _sum_tangents(out, ((d_logits, x_dot), (d_target_logits, t_dot)))


binary_kl_divergence.defjvp(_binary_kl_divergence_jvp, symbolic_zeros=True)
