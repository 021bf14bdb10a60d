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
from jaxbce._elementwise import bce_with_logits
from jaxbce._focal import accurate_q_power, sigmoid_focal
from jaxbce._numerics import corrected, define_partials, neg_abs, sigmoid_pair, sigmoids, softplus, weighted

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
    sigmoid_x, sigmoid_minus_x = sigmoids(x)
    p_m = jnp.where(kept, (1 - clip) * sigmoid_x * -jnp.expm1(x0 - x), 0.5)
    neg_log_v = jnp.where(p_m < 0.5, -jnp.log1p(-p_m), -jnp.log(sigmoid_minus_x + clip))
    return kept, p_m, neg_log_v


def _power(base: jax.Array, exponent: float) -> jax.Array:
    return jax.lax.integer_pow(base, int(exponent)) if float(exponent).is_integer() else base**exponent


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def clipped_negative(x: jax.Array, gamma: float, clip: float) -> jax.Array:
    """p_m**gamma * -log(1 - p_m) with p_m = max(sigmoid(x) - clip, 0), for clip in (0, 1)."""
    return _clipped_negative_value(_clipped_pairs(x, clip), gamma)


def _clipped_negative_value(pairs: _Clipped, gamma: float) -> jax.Array:
    value = dw.multiply(dw.power(pairs.p_m, gamma), pairs.neg_log_v) if gamma else pairs.neg_log_v
    return jnp.where(pairs.kept, dw.value(value), 0)


def _clipped_negative_slope(x: jax.Array, pairs: _Clipped, gamma: float) -> jax.Array:
    """p' (gamma p_m**(gamma - 1) (-log v) + p_m**gamma / v), p' = sigmoid(x) sigmoid(-x), from pairs."""
    kept, p_m, v, neg_log_v, small, large = pairs
    # Where sigmoid(-x) underflows (x > 87 in float32) the product with factor (up to 1/clip) can still be a
    # normal number: beyond exp(-x) < eps**2, where sigmoid(-x) = exp(-x) (1 - exp(-x)) is exp(-x) to the
    # pairs' precision, it is taken 2**64 times larger and the result scaled back exactly.
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
    return jnp.where(kept, dw.times_power_of_two(scaled, -shift), 0)


def _clipped_negative_value_and_slope(gamma, clip, x):
    pairs = _clipped_pairs(x, clip)
    return _clipped_negative_value(pairs, gamma), _clipped_negative_slope(x, pairs, gamma)


def _clipped_negative_plain(x, gamma, clip):
    kept, p_m, neg_log_v = _clipped_plain(x, clip)
    return jnp.where(kept, (_power(p_m, gamma) if gamma else 1) * neg_log_v, 0)


def _clipped_negative_slope_plain(gamma, clip, x):
    return jax.jvp(lambda z: _clipped_negative_plain(z, gamma, clip), (x,), (jnp.ones_like(x),))[1]


@define_partials(
    clipped_negative, value_and_slope=_clipped_negative_value_and_slope, plain_slope=_clipped_negative_slope_plain
)
def _clipped_negative_partials(gamma, clip, x):
    return ()  # x, the only array, has the slope


def _unclipped(x, label, gamma, pos_weight=None):
    """pos_weight * the focal core at a hard label. Without focusing this is the BCE core's term, with
    pos_weight inside it: the same value and a gradient as exact, from a program a fifth the size, and scaled
    before it is rounded (a weighted gradient is a normal number where sigmoid(-x) alone is subnormal)."""
    if not gamma:
        return bce_with_logits(x, label, pos_weight, 0.0)
    term = sigmoid_focal(x, label, None, gamma, 0.0)
    return term if pos_weight is None else weighted(pos_weight, term)


def _positive(x, pos_weight, gamma_pos):
    return _unclipped(x, jnp.ones_like(x), gamma_pos, pos_weight)


def _negative(x, gamma_neg, clip):
    return clipped_negative(x, gamma_neg, clip) if clip else _unclipped(x, jnp.zeros_like(x), gamma_neg)


def _positive_weight_stopped(x, pos_weight, gamma_pos):
    """The positive term with its focusing weight under ``stop_gradient`` (the reference's
    ``disable_torch_grad_focal_loss``): the weight is the pair value, the log term keeps its derivative."""
    positive = bce_with_logits(x, jnp.ones_like(x), pos_weight, 0.0)
    if gamma_pos:
        positive = jax.lax.stop_gradient(accurate_q_power(x, jnp.ones_like(x), gamma_pos, 0.0)) * positive
    return positive


def _negative_weight_stopped(x, gamma_neg, clip):
    """The negative term with its focusing weight under ``stop_gradient``, as ``_positive_weight_stopped``."""
    if clip:
        kept, _, neg_log_v = _clipped_plain(x, clip)
        weight = dw.value(dw.power(_clipped_pairs(x, clip).p_m, gamma_neg)) if gamma_neg else 1
        return jnp.where(kept, jax.lax.stop_gradient(weight) * neg_log_v, 0)
    negative = softplus(x)
    if gamma_neg:
        negative = jax.lax.stop_gradient(accurate_q_power(x, jnp.zeros_like(x), gamma_neg, 0.0)) * negative
    return negative


def asymmetric(
    x: jax.Array,
    y: jax.Array,
    pos_weight: jax.Array | None,
    gamma_pos: float,
    gamma_neg: float,
    clip: float,
    stop_focusing_gradient: bool,
) -> jax.Array:
    """y * positive(x) + (1 - y) * negative(x), the two terms exact (module docs), pos_weight in the positive
    one; a term whose label weight is 0 is 0 even where it is infinite (an infinite logit)."""
    positive = functools.partial(_positive, gamma_pos=gamma_pos)
    negative = functools.partial(_negative, gamma_neg=gamma_neg, clip=clip)
    if stop_focusing_gradient:
        # The same values, with the derivatives of the terms whose weights are stopped.
        positive = functools.partial(
            corrected, functools.partial(_positive_weight_stopped, gamma_pos=gamma_pos), positive
        )
        negative = functools.partial(
            corrected, functools.partial(_negative_weight_stopped, gamma_neg=gamma_neg, clip=clip), negative
        )
    return weighted(y, positive(x, pos_weight)) + weighted(1 - y, negative(x))
