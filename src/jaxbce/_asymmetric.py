"""The asymmetric loss (ASL, Ridnik et al., ICCV 2021) in logit space.

    loss = pw * y * (1 - p)**gamma_pos * softplus(-x) + (1 - y) * p_m**gamma_neg * (-log(1 - p_m))
    p = sigmoid(x),  p_m = max(p - clip, 0)

The positive term is the focal loss's core at a hard positive label, and without a clip the negative term is
the focal core at a hard negative label, so both inherit its accuracy and its derivatives. The clipped
negative term is new, and the reference implementation's form of it, ``log(clamp(1 - p + clip, max=1))``
behind an eps clamp on ``p``, loses it twice over: ``p - clip`` cancels where ``p`` is near ``clip``, and
``log`` of a number near 1 is relative to 1, not to the tiny result. Here, with ``x0 = logit(clip)``:

* ``p_m = (1 - clip) * sigmoid(x) * -expm1(x0 - x)`` near the clip (``|x - x0| < ln2 / 2``, where the
  reduced exponential's ``u = exp(x0 - x) - 1`` is computed directly), and ``sigmoid(x) - clip`` from a
  sigmoid pair beyond it, where ``p >= 1.4 clip`` and the subtraction loses under 2 bits of a pair;
* ``-log(1 - p_m) = p_m + p_m**2 / 2 + ...`` as a series for ``p_m < 1/16``, else ``-log`` of a pair: of
  ``1 - p_m`` up to ``p_m = 1/2``, of ``sigmoid(-x) + clip`` beyond (a sum of positive terms where ``1 - p_m``
  would cancel);
* the value and the logits gradient are products of those pairs, rounded once; higher derivatives are those
  of the plain form (:func:`jaxbce._numerics.corrected`).
"""

import decimal
import fractions
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbce import _double_word as dw
from jaxbce._focal import accurate_q_power, sigmoid_focal
from jaxbce._numerics import corrected, define_partials, neg_abs, sigmoid, sigmoid_pair, softplus, weighted

# Below this p_m, -log(1 - p_m) is summed as a series (see the module docs).
_SERIES_BELOW = 1 / 16


@functools.cache
def _logit(clip: float) -> fractions.Fraction:
    """logit(clip) = log(clip / (1 - clip)) to 50 digits, exactly as a fraction (clip as the float given)."""
    with decimal.localcontext() as context:
        context.prec = 50
        c = decimal.Decimal(clip)
        return fractions.Fraction((c / (1 - c)).ln())


def _series_terms(dtype) -> int:
    # -log(1 - p) = p + p**2 * sum_n p**n / (n + 2): the terms left out are below (1/16)**(n + 1), relative to
    # p**2 / 2, so n + 1 >= log(eps / 100) / log(1/16) makes them at most 0.01 eps of the result.
    return math.ceil(math.log(np.finfo(dtype).eps / 100) / math.log(_SERIES_BELOW))


def _kept(x: jax.Array, x0: dw.Pair) -> jax.Array:
    """x > x0 for the pair x0 = logit(clip), i.e. p > clip; True for NaN, so that it propagates."""
    return ~((x < x0.hi) | ((x == x0.hi) & (x0.lo >= 0)))


class _Clipped(NamedTuple):
    """The clipped negative term's parts as pairs, valid where ``kept``."""

    kept: jax.Array  # p > clip (or x NaN)
    p_m: dw.Pair  # p - clip
    v: dw.Pair  # 1 - p_m
    neg_log_v: dw.Pair  # -log(1 - p_m)
    small: dw.Pair  # sigmoid(-|x|)
    large: dw.Pair  # sigmoid(|x|)


def _clipped_pairs(x: jax.Array, clip: float) -> _Clipped:
    dtype = x.dtype
    zero = jnp.zeros_like(x)
    one = dw.Pair(jnp.ones_like(x), zero)
    c = dw.constant(clip, dtype)
    small = sigmoid_pair(neg_abs(x))
    large = dw.add(one, dw.negative(small))
    above = x > 0
    sigmoid_x, sigmoid_minus_x = dw.select(above, large, small), dw.select(above, small, large)
    x0 = dw.constant(_logit(clip), dtype)
    w = dw.add(x0, dw.Pair(-x, zero))
    kept = _kept(x, x0)
    near = w.hi > -0.34  # |w| < ln2 / 2, so the reduction's k is 0 and exp(w) - 1 = u_hi + u_lo
    u_hi, u_lo, _ = dw.reduced_exp(jnp.where(near, w.hi, 0), jnp.where(near, w.lo, 0))
    one_minus_c = dw.constant(1 - fractions.Fraction(clip), dtype)
    near_p_m = dw.multiply(dw.multiply(one_minus_c, sigmoid_x), dw.negative(dw.fast_two_sum(u_hi, u_lo)))
    p_m = dw.select(near, near_p_m, dw.add(sigmoid_x, dw.negative(c)))
    small_p = p_m.hi < 0.5
    v = dw.select(small_p, dw.add(one, dw.negative(p_m)), dw.add(sigmoid_minus_x, c))
    h = jnp.zeros_like(x)
    for n in range(_series_terms(dtype), -1, -1):
        h = h * p_m.hi + 1 / (n + 2)
    series = dw.fast_two_sum(p_m.hi, p_m.lo + p_m.hi * p_m.hi * h)
    neg_log_v = dw.select(p_m.hi < _SERIES_BELOW, series, dw.negative(dw.log(dw.select(kept, v, one))))
    return _Clipped(kept, p_m, v, neg_log_v, small, large)


def _clipped_plain(x: jax.Array, clip: float):
    """(kept, p_m, -log(1 - p_m)) in plain arithmetic, differentiable to every order; where not kept, p_m is
    1/2 and the log is taken at x0 + 1, so that nothing there is infinite."""
    x0 = float(_logit(clip))
    kept = _kept(x, dw.constant(_logit(clip), x.dtype))
    # Where not kept, x0 - x can be large (expm1 overflows, times a sigmoid that underflows): compute at x0 + 1
    # instead, so that the branch not taken has finite derivatives too.
    x = jnp.where(kept, x, x0 + 1)
    p_m = jnp.where(kept, (1 - clip) * sigmoid(x) * -jnp.expm1(x0 - x), 0.5)
    neg_log_v = jnp.where(p_m < 0.5, -jnp.log1p(-p_m), -jnp.log(sigmoid(-x) + clip))
    return kept, p_m, neg_log_v


def _power(base: jax.Array, exponent: float) -> jax.Array:
    return jax.lax.integer_pow(base, int(exponent)) if float(exponent).is_integer() else base**exponent


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def clipped_negative(x: jax.Array, gamma: float, clip: float) -> jax.Array:
    """p_m**gamma * -log(1 - p_m) with p_m = max(sigmoid(x) - clip, 0), for clip in (0, 1)."""
    kept, p_m, _, neg_log_v, _, _ = _clipped_pairs(x, clip)
    value = dw.value(dw.multiply(dw.power(p_m, gamma), neg_log_v)) if gamma else dw.value(neg_log_v)
    return jnp.where(kept, value, 0)


def _clipped_negative_plain(x, gamma, clip):
    kept, p_m, neg_log_v = _clipped_plain(x, clip)
    return jnp.where(kept, (_power(p_m, gamma) if gamma else 1) * neg_log_v, 0)


@define_partials(clipped_negative)
def _clipped_negative_partials(gamma, clip, x):
    def d_logits():
        # p' (gamma p_m**(gamma - 1) (-log v) + p_m**gamma / v), p' = sigmoid(x) sigmoid(-x), from pairs.
        kept, p_m, v, neg_log_v, small, large = _clipped_pairs(x, clip)
        # Where sigmoid(-x) underflows (x > 87 in float32) the product with factor (up to 1/clip) can still
        # be a normal number: beyond exp(-x) < eps**2, where sigmoid(-x) = exp(-x) (1 - exp(-x)) is exp(-x)
        # to the pairs' precision, it is taken 2**64 times larger and the result scaled back exactly.
        nx = neg_abs(x)
        tail = nx < 2 * math.log(np.finfo(x.dtype).eps)
        *u, k = dw.reduced_exp(nx)
        shift = jnp.where(tail, 64, 0).astype(x.dtype)
        small = dw.select(tail, dw.times_power_of_two(dw.one_plus(*u), k + shift), small)
        one = dw.Pair(jnp.ones_like(x), jnp.zeros_like(x))
        if gamma:
            lower = dw.power(p_m, gamma - 1)
            factor = dw.add(
                dw.multiply(dw.multiply(lower, neg_log_v), dw.constant(gamma, x.dtype)),
                dw.divide(dw.multiply(lower, p_m), v),
            )
        else:
            factor = dw.divide(one, v)
        scaled = dw.value(dw.multiply(factor, dw.multiply(small, large)))
        accurate = jnp.where(kept, dw.times_power_of_two(scaled, -shift), 0)
        plain = jax.jvp(lambda z: _clipped_negative_plain(z, gamma, clip), (x,), (jnp.ones_like(x),))[1]
        return corrected(plain, accurate)

    return (d_logits,)


def _focusing_weights_stopped(x, gamma_pos, gamma_neg, clip):
    """The two terms with their focusing weights under ``stop_gradient`` (the reference's
    ``disable_torch_grad_focal_loss``): the weight is the pair value, the log term keeps its derivative."""
    zeros, ones = jnp.zeros_like(x), jnp.ones_like(x)
    positive = softplus(-x)
    if gamma_pos:
        positive = jax.lax.stop_gradient(accurate_q_power(x, ones, gamma_pos, 0.0)) * positive
    if clip:
        kept, _, neg_log_v = _clipped_plain(x, clip)
        weight = dw.value(dw.power(_clipped_pairs(x, clip).p_m, gamma_neg)) if gamma_neg else 1
        negative = jnp.where(kept, jax.lax.stop_gradient(weight) * neg_log_v, 0)
    else:
        negative = softplus(x)
        if gamma_neg:
            negative = jax.lax.stop_gradient(accurate_q_power(x, zeros, gamma_neg, 0.0)) * negative
    return positive, negative


def asymmetric(
    x: jax.Array,
    y: jax.Array,
    pos_weight: jax.Array | None,
    gamma_pos: float,
    gamma_neg: float,
    clip: float,
    stop_focusing_gradient: bool,
) -> jax.Array:
    """pw * y * positive(x) + (1 - y) * negative(x), the two terms exact (module docs); a term whose label
    weight is 0 is 0 even where it is infinite (an infinite logit)."""
    zeros, ones = jnp.zeros_like(x), jnp.ones_like(x)
    positive = sigmoid_focal(x, ones, None, gamma_pos, 0.0)
    negative = clipped_negative(x, gamma_neg, clip) if clip else sigmoid_focal(x, zeros, None, gamma_neg, 0.0)
    if stop_focusing_gradient:
        plain_positive, plain_negative = _focusing_weights_stopped(x, gamma_pos, gamma_neg, clip)
        positive, negative = corrected(plain_positive, positive), corrected(plain_negative, negative)
    positive_weight = y if pos_weight is None else pos_weight * y
    return weighted(positive_weight, positive) + weighted(1 - y, negative)
