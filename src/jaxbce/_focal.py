"""The sigmoid focal loss (Lin et al., RetinaNet): value and logits gradient in double-word arithmetic,
higher derivatives from a plain form in which every factor stays bounded.

Why two forms: in plain float32, ``1 - p_t`` comes out within about 1 eps and ``(1 - p_t)**gamma`` multiplies
that by ``gamma`` (more again for a fractional ``gamma``), so the value and the gradient are formed from
double-word pairs (``_focal_terms``) and rounded once. Derivatives of order two and up are those of the plain
form (as :func:`jaxbce._numerics.corrected` gives them), written with ``r = d log q / dx`` (q = 1 - p_t)
rather than with ``q**(gamma - 1)``: the power overflows where q is tiny but normal (``q**-1.5`` at q =
1e-26), and its product with a tiny ``q'`` would make the Hessian -inf or NaN at hard labels and |logits| around
50 (gamma = 0.5). ``r`` is in [-1, 1] and so are its derivatives, so every order in the logits stays finite.

What keeps the derivatives cheap to trace: each core's rule forms its value and its logits derivative from one
evaluation (``value_and_slope`` of :func:`jaxbce._numerics.define_partials`: one set of pairs, one ``q`` and one
pair of sigmoids), and partials that share a factor compute it once. A derivative of order n traces a tree of
these rules, so every evaluation saved at a node is saved at each of its copies (the programs' sizes are in
docs/benchmarks.md).
"""

import fractions
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbce import _double_word as dw
from jaxbce._elementwise import bce_coefficients, bce_with_logits
from jaxbce._numerics import (
    define_partials,
    neg_abs,
    sigmoid_nonpositive,
    sigmoid_pair,
    sigmoids,
    smoothed_labels,
    times,
    weighted,
)


def _q(x, positive, negative):
    """q = 1 - p_t = positive * sigmoid(-x) + negative * sigmoid(x), a sum of non-negative terms, with the two
    sigmoids."""
    sigmoid_x, sigmoid_minus_x = sigmoids(x)
    return positive * sigmoid_minus_x + negative * sigmoid_x, sigmoid_x, sigmoid_minus_x


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _q_power(x: jax.Array, positive: jax.Array, negative: jax.Array, exponent: float) -> jax.Array:
    """q**exponent in plain arithmetic: exact to rounding for multiples of 1/2 (products and a square root),
    ``exp(exponent * log q)`` otherwise (about |exponent * log q| / 2 eps). Its value only enters derivatives
    of order two and up (the value and gradient of the loss come from pairs).

    At q = 0 (q below the smallest normal number) a negative power is taken as 0, not inf: it only ever
    multiplies terms that vanish there, and an inf would turn reverse-mode products into inf * 0 = NaN.
    """
    return _power_of_q(_q(x, positive, negative)[0], exponent)


def _power_of_q(q, exponent):
    safe = jnp.where(q < np.finfo(q.dtype).tiny, 1, q)
    # A negative power as the reciprocal of a positive one: q**-1.5 as q**-2 * q**0.5 would overflow first.
    magnitude = abs(exponent)
    whole, fraction = math.floor(magnitude), magnitude - math.floor(magnitude)
    power = jax.lax.integer_pow(safe, whole) if whole else jnp.ones_like(q)
    if fraction == 0.5:
        power = power * jnp.sqrt(safe)
    elif fraction:
        power = power * jnp.exp(fraction * jnp.log(safe))
    return jnp.where(safe == q, power if exponent >= 0 else 1 / power, 0.0 if exponent else 1.0)


def _q_power_slope(x, positive, negative, exponent):
    """d/dx q**exponent = exponent q**exponent r, with r = (log q)' bounded (see the module docs)."""
    return exponent * _q_power(x, positive, negative, exponent) * _log_q_slope(x, positive, negative)


def _q_power_label_slope(x, positive, negative, exponent):
    """d/dy_s q**exponent = exponent q**(exponent - 1) (sigmoid(-x) - sigmoid(x))."""
    sigmoid_x, sigmoid_minus_x = sigmoids(x)
    return exponent * _q_power(x, positive, negative, exponent - 1) * (sigmoid_minus_x - sigmoid_x)


def _q_power_value_and_slope(exponent, x, positive, negative):
    # The value and _q_power_slope from one q (every derivative order traces this at each node of its tree).
    q, sigmoid_x, sigmoid_minus_x = _q(x, positive, negative)
    power = _power_of_q(q, exponent)
    return power, exponent * power * _log_q_slope_of(x, positive, negative, q, sigmoid_x, sigmoid_minus_x)


@define_partials(
    _q_power,
    value_and_slope=_q_power_value_and_slope,
    plain_slope=lambda exponent, *arrays: _q_power_slope(*arrays, exponent),
)
def _q_power_partials(exponent, x, positive, negative):
    # In the labels, exponent q**(exponent - 1) dq, with dq = sigmoid(-x) d positive + sigmoid(x) d negative;
    # the two partials share their factors (both are taken when the labels vary).
    @functools.cache
    def factors():
        return exponent * _q_power(x, positive, negative, exponent - 1), *sigmoids(x)

    def d_positive():
        lower, _, sigmoid_minus_x = factors()
        return lower * sigmoid_minus_x

    def d_negative():
        lower, sigmoid_x, _ = factors()
        return lower * sigmoid_x

    return d_positive, d_negative


@jax.custom_jvp
def _log_q_slope(x: jax.Array, positive: jax.Array, negative: jax.Array) -> jax.Array:
    """r = d log(q) / dx = (negative - positive) sigmoid(x) sigmoid(-x) / q, in [-1, 1].

    Where q is below the smallest normal number (a label within about that of 0 or 1, and a saturated logit)
    r is the hard label's limit: sigmoid(-x) for x <= 0, -sigmoid(x) for x > 0.
    """
    return _log_q_slope_of(x, positive, negative, *_q(x, positive, negative))


def _log_q_slope_of(x, positive, negative, q, sigmoid_x, sigmoid_minus_x):
    underflow = q < np.finfo(x.dtype).tiny
    ratio = (negative - positive) * (sigmoid_x / jnp.where(underflow, 1, q)) * sigmoid_minus_x
    return jnp.where(underflow, jnp.where(x > 0, -sigmoid_x, sigmoid_minus_x), ratio)


def _log_q_second_derivative(x, positive, negative):
    # r' = q'' / q - r**2 with q'' = q' (sigmoid(-x) - sigmoid(x)).
    sigmoid_x, sigmoid_minus_x = sigmoids(x)
    r = _log_q_slope(x, positive, negative)
    return r * (sigmoid_minus_x - sigmoid_x - r)


def _log_q_value_and_slope(x, positive, negative):
    # r and r' from one q (as _q_power_value_and_slope).
    q, sigmoid_x, sigmoid_minus_x = _q(x, positive, negative)
    r = _log_q_slope_of(x, positive, negative, q, sigmoid_x, sigmoid_minus_x)
    return r, r * (sigmoid_minus_x - sigmoid_x - r)


@define_partials(_log_q_slope, value_and_slope=_log_q_value_and_slope, plain_slope=_log_q_second_derivative)
def _log_q_slope_partials(x, positive, negative):
    @functools.cache  # both partials use it when the labels vary
    def curvature():
        # sigmoid(x) sigmoid(-x) / q**2: d r / d positive = -negative * this, d r / d negative = positive * this.
        sigmoid_x, sigmoid_minus_x = sigmoids(x)
        return sigmoid_x * sigmoid_minus_x * _q_power(x, positive, negative, -2.0)

    return lambda: -negative * curvature(), lambda: positive * curvature()


def _alpha_t(alpha, positive, negative):
    return None if alpha is None else alpha * positive + (1 - alpha) * negative


class _FocalTerms(NamedTuple):
    factor: dw.Pair  # (1 - p_t)**gamma
    d_factor: dw.Pair | None  # its derivative in x (None for gamma = 0)
    d_ce: dw.Pair  # the derivative of bce in x, sigmoid(x) - y_s
    alpha_t: dw.Pair | None


def _focal_terms(x: jax.Array, y: jax.Array, alpha: jax.Array | None, gamma: float, label_smoothing: float):
    """The parts of the focal loss and of its derivative in x as pairs (``_double_word``), each within a small
    fraction of an eps.

    Plain arithmetic is not enough here: q = 1 - p_t = y_s sigmoid(-x) + (1 - y_s) sigmoid(x) comes out within
    about 1 eps, and q**gamma multiplies that by gamma (and exp(f log q) by f |log q| for fractional
    exponents). As pairs, the labels 1 - y and y_s are exact, sigmoid is within 0.1 eps, and powers are
    evaluated by ``_double_word.power``; q below the smallest normal number counts as 0.
    """
    dtype = x.dtype
    positive, negative = dw.Pair(y, jnp.zeros_like(y)), dw.fast_two_sum(jnp.ones_like(y), -y)
    if label_smoothing:
        keep = dw.constant(1 - fractions.Fraction(label_smoothing), dtype)
        half = dw.constant(fractions.Fraction(label_smoothing) / 2, dtype)
        positive, negative = dw.add(dw.multiply(keep, y), half), dw.add(dw.multiply(keep, negative), half)
    zero, one = dw.Pair(jnp.zeros_like(x), jnp.zeros_like(x)), dw.Pair(jnp.ones_like(x), jnp.zeros_like(x))
    small = sigmoid_pair(neg_abs(x))  # sigmoid(-|x|)
    large = dw.add(one, dw.negative(small))  # sigmoid(|x|)
    above = x > 0
    sigmoid_x, sigmoid_minus_x = dw.select(above, large, small), dw.select(above, small, large)
    q = dw.add(dw.multiply(positive, sigmoid_minus_x), dw.multiply(negative, sigmoid_x))
    is_zero = q.hi < np.finfo(dtype).tiny
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
        # alpha y_s + (1 - alpha)(1 - y_s), with 1 - alpha an exact pair.
        one_minus_alpha = dw.fast_two_sum(jnp.ones_like(alpha), -alpha)
        alpha_t = dw.add(dw.multiply(positive, alpha), dw.multiply(negative, one_minus_alpha))
    return _FocalTerms(factor, d_factor, dw.add(sigmoid_x, dw.negative(positive)), alpha_t)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def sigmoid_focal(x: jax.Array, y: jax.Array, alpha: jax.Array | None, gamma: float, label_smoothing: float):
    """alpha_t * (1 - p_t)**gamma * bce(x, y) (torchvision / RetinaNet, soft labels allowed): the product of
    the pair factors (``_focal_terms``) and bce is rounded once."""
    ce = bce_with_logits(x, y, None, label_smoothing)
    return _focal_value(ce, _focal_terms(x, y, alpha, gamma, label_smoothing))


def _focal_value(ce: jax.Array, terms: _FocalTerms) -> jax.Array:
    scale = terms.factor if terms.alpha_t is None else dw.multiply(terms.factor, terms.alpha_t)
    # An infinite bce (an infinite logit against its label) times a zero factor is 0. Within a factor 2 of the
    # largest float, the split of bce in the double-word product rounds up to inf (NaN products): there it is
    # multiplied by each half of the scale in plain arithmetic, within 1.5 eps.
    near_overflow = jnp.abs(ce) > jnp.finfo(ce.dtype).max / 2
    plain = scale.hi * ce + scale.lo * ce
    exact = jnp.where(near_overflow, plain, dw.value(dw.multiply(scale, ce)))
    return jnp.where(jnp.isinf(ce), weighted(scale.hi, ce), exact)


def _focal_slope(ce: jax.Array, terms: _FocalTerms) -> jax.Array:
    """The logits derivative from pairs, rounded once at the end.

    Both terms are scaled up by 2**-exponent so that the factor is in [1, 2) (it is at most 1), and neither
    term is flushed to zero as a subnormal number where the result is a normal one. At an infinite logit bce
    is infinite and the factor's derivative exactly 0 (sigmoid(-|x|) is): their product is taken as 0.
    """
    exponent = jnp.frexp(terms.factor.hi)[1].astype(ce.dtype) - 1
    d = dw.multiply(dw.times_power_of_two(terms.factor, -exponent), terms.d_ce)
    if terms.d_factor is not None:
        d_factor = dw.times_power_of_two(terms.d_factor, -exponent)
        d = dw.add(d, dw.multiply(d_factor, jnp.where(jnp.isinf(ce), 0, ce)))
    if terms.alpha_t is not None:
        d = dw.multiply(d, terms.alpha_t)
    return dw.times_power_of_two(dw.value(d), exponent)


def _focal_value_and_slope(gamma, label_smoothing, x, y, alpha):
    """The value and the logits derivative from one evaluation of the pairs."""
    ce = bce_with_logits(x, y, None, label_smoothing)
    terms = _focal_terms(x, y, alpha, gamma, label_smoothing)
    return _focal_value(ce, terms), _focal_slope(ce, terms)


def _focal_slope_plain(gamma, label_smoothing, x, y, alpha):
    """The logits derivative in plain arithmetic, differentiable to every order."""
    positive, negative = smoothed_labels(y, label_smoothing)
    s = sigmoid_nonpositive(neg_abs(x))
    d_ce = jnp.where(x > 0, 1, -1) * (bce_coefficients(x, y, None, label_smoothing)[0] - s)
    slope = _q_power_slope(x, positive, negative, gamma) if gamma else None
    return _product_rule(x, y, alpha, gamma, label_smoothing, slope, d_ce)


@define_partials(sigmoid_focal, value_and_slope=_focal_value_and_slope, plain_slope=_focal_slope_plain)
def _sigmoid_focal_partials(gamma, label_smoothing, x, y, alpha):
    @functools.cache  # both partials use it when the labels and alpha vary
    def without_alpha():
        return _focal_without_alpha(x, y, gamma, label_smoothing)

    def d_labels():
        # d/dy_s, then dy_s/dy = 1 - s: ce' = -x, alpha_t' = 2 alpha - 1.
        positive, negative = smoothed_labels(y, label_smoothing)
        slope = _q_power_label_slope(x, positive, negative, gamma) if gamma else None
        d = _product_rule(x, y, alpha, gamma, label_smoothing, slope, -x)
        if alpha is not None:
            d = d + (2 * alpha - 1) * without_alpha()
        return d * (1 - label_smoothing)

    def d_alpha():
        # alpha_t' = y_s - (1 - y_s); the rest of the loss is factor * ce (0 * inf = 0 as above).
        positive, negative = smoothed_labels(y, label_smoothing)
        return (positive - negative) * without_alpha()

    return d_labels, d_alpha


def _q_power_or_one(x, y, gamma, label_smoothing):
    return _q_power(x, *smoothed_labels(y, label_smoothing), gamma) if gamma else jnp.ones_like(x)


def _focal_without_alpha(x, y, gamma, label_smoothing):
    """(1 - p_t)**gamma * bce in plain arithmetic (0 * inf = 0)."""
    return weighted(_q_power_or_one(x, y, gamma, label_smoothing), bce_with_logits(x, y, None, label_smoothing))


def _product_rule(x, y, alpha, gamma, label_smoothing, d_factor, d_ce):
    """alpha_t (factor * ce)' = alpha_t (factor' ce + factor ce') in plain arithmetic, with 0 * inf = 0 on both
    sides: factor' = 0 where ce is infinite (infinite logits), and factor = 0 where ce' is infinite."""
    d = weighted(_q_power_or_one(x, y, gamma, label_smoothing), d_ce)
    if gamma:
        d = d + weighted(d_factor, bce_with_logits(x, y, None, label_smoothing))
    return times(_alpha_t(alpha, *smoothed_labels(y, label_smoothing)), d)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def accurate_q_power(x: jax.Array, y: jax.Array, exponent: float, label_smoothing: float) -> jax.Array:
    """(1 - p_t)**exponent for exponent >= 1 (Poly-1's term), from the pairs of ``_focal_terms`` and rounded once:
    exact to rounding where 1 - p_t is tiny as elsewhere. Its gradient comes from the same pairs, and the
    higher derivatives from the plain form, as for the focal loss."""
    return dw.value(_focal_terms(x, y, None, exponent, label_smoothing).factor)


def _accurate_q_power_value_and_slope(exponent, label_smoothing, x, y):
    terms = _focal_terms(x, y, None, exponent, label_smoothing)
    return dw.value(terms.factor), dw.value(terms.d_factor)


def _accurate_q_power_slope_plain(exponent, label_smoothing, x, y):
    return _q_power_slope(x, *smoothed_labels(y, label_smoothing), exponent)


@define_partials(
    accurate_q_power,
    value_and_slope=_accurate_q_power_value_and_slope,
    plain_slope=_accurate_q_power_slope_plain,
)
def _accurate_q_power_partials(exponent, label_smoothing, x, y):
    def d_labels():
        positive, negative = smoothed_labels(y, label_smoothing)
        return _q_power_label_slope(x, positive, negative, exponent) * (1 - label_smoothing)

    return (d_labels,)
