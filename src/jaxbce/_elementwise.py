"""Stable elementwise cores of the jaxbce losses and their ``jax.custom_jvp`` rules.

Everything here works in logit space on arrays that the pipeline has already checked, broadcast and cast to
the compute dtype (float32, or float64 for float64 inputs). Two building blocks carry the numerics:

* ``softplus(-|x|) = log1p(exp(-|x|))``, which lies in (0, log 2]. For |x| >= 1 XLA's ``log1p`` is accurate
  to 0.5 eps; for |x| < 1 (where XLA's ``log1p`` is off by up to 1.4 eps) it is evaluated as
  ``(log2_hi - |x|/2) + (log2_lo + log(cosh(x/2)))``, a sum of two non-negative parts with no cancellation,
  the second a polynomial in x**2 fitted by ``scripts/fit_softplus_poly.py``.
* ``sigmoid(-|x|) = e / (1 + e)`` with the same ``e = exp(-|x|)``: a quotient of positive numbers, exact to
  rounding for every x, including the tails where ``sigmoid(x)`` rounds to 1.

Every loss is then a sum of non-negative terms in those two quantities, and every rule's tangent is a stable
expression that JAX can differentiate again, so derivatives of every order stay finite and exact to rounding.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

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
    np.dtype(np.float32): (np.float32(0.6931472), np.float32(0.6931471805599453 - float(np.float32(0.6931472)))),
    np.dtype(np.float64): (np.float64(0.6931471805599453), np.float64(2.3190468138462996e-17)),
}


# Cody-Waite reduction for exp(nx) = m * 2**k: ln2 = hi + lo with k * hi exact, the lowest nx worth
# computing (below it exp underflows to 0), the Taylor degree that reaches 0.05 eps on |r| <= ln2 / 2,
# and the integer type, mantissa width and exponent bias that build 2**k from bits.
_EXP_REDUCTION = {
    np.dtype(np.float32): (0.693359375, -2.12194440e-4, -170.0, 7, np.int32, 23, 127),
    np.dtype(np.float64): (6.93147180369123816490e-01, 1.90821492927058770002e-10, -1400.0, 13, np.int64, 52, 1023),
}


def _power_of_two(k: jax.Array, dtype) -> jax.Array:
    *_, int_type, mantissa_bits, bias = _EXP_REDUCTION[np.dtype(dtype)]
    return jax.lax.bitcast_convert_type((k.astype(int_type) + bias) << mantissa_bits, dtype)


@jax.custom_jvp
def _scaled_exp(nx: jax.Array, scale: jax.Array) -> jax.Array:
    """scale * exp(nx) for nx <= 0, rounded once at the end.

    exp(nx) = m * 2**k1 * 2**k2 with m in [0.7, 1.42] and both powers of two normal numbers, so that
    ``scale * exp(nx)`` is exact to rounding even where exp(nx) alone would be subnormal (and flushed to 0 by
    XLA): with pos_weight > 1 the loss of a hard label can be normal where exp(-|x|) is not.
    """
    dtype = np.dtype(nx.dtype)
    ln2_hi, ln2_lo, lowest, degree, *_ = _EXP_REDUCTION[dtype]
    clamped = jnp.maximum(nx, lowest)
    k = jnp.round(clamped * (1 / math.log(2)))
    r = (clamped - k * ln2_hi) - k * ln2_lo
    p = jnp.asarray(1 / math.factorial(degree), dtype)
    for n in range(degree - 1, 1, -1):
        p = p * r + 1 / math.factorial(n)
    m = 1 + (r + r * r * p)
    k1 = jnp.floor(0.5 * k)
    scaled = ((scale * m) * _power_of_two(k1, dtype)) * _power_of_two(k - k1, dtype)
    return jnp.where(jnp.isnan(nx), nx, scaled)


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
    """1 / (1 + exp(-x)) from sigmoid(-|x|), exact to rounding in both tails."""
    s = _sigmoid_nonpositive(_neg_abs(x))
    return jnp.where(x > 0, 1 - s, s)


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
def bce_with_logits(
    x: jax.Array, y: jax.Array, pos_weight: jax.Array | None, label_smoothing: float
) -> jax.Array:
    """pw*y*softplus(-x) + (1-y)*softplus(x) (labels smoothed by the static ``label_smoothing``) as a sum of
    non-negative terms (for y in [0, 1], pw >= 0)."""
    nx = _neg_abs(x)
    a, c = _bce_coefficients(x, y, pos_weight, label_smoothing)
    return _zero_times(a, -nx) + _softplus_nonpositive(nx, c)


def _bce_with_logits_jvp(label_smoothing, primals, tangents):
    x, y, pos_weight = primals
    x_dot, y_dot, pos_weight_dot = tangents
    out = bce_with_logits(x, y, pos_weight, label_smoothing)

    def d_logits():
        # For x > 0 the derivative is (1-y) - c*sigmoid(-x), for x <= 0 it is c*sigmoid(x) - pw*y: with
        # s = sigmoid(-|x|) both are +-(a - c*s), and neither cancels when y is 0 or 1 (for y = 1, x > 0 it
        # is -c*s exactly, not the 1 - 1 that sigmoid(x) - y rounds to in the tail).
        a, c = _bce_coefficients(x, y, pos_weight, label_smoothing)
        c_s = _sigmoid_nonpositive(_neg_abs(x), c)
        return jnp.where(x > 0, a - c_s, c_s - a)

    def d_labels():
        # d/dy_s times dy_s/dy = 1 - s; without pos_weight d/dy_s = softplus(-x) - softplus(x) = -x exactly.
        if pos_weight is None:
            d = -x
        else:
            d = _zero_times(pos_weight, softplus(-x)) - softplus(x)
        return d if label_smoothing == 0 else d * (1 - label_smoothing)

    def d_pos_weight():
        return _zero_times(smoothed_labels(y, label_smoothing)[0], softplus(-x))

    terms = ((d_logits, x_dot), (d_labels, y_dot), (d_pos_weight, pos_weight_dot))
    return out, _sum_tangents(out, terms)


bce_with_logits.defjvp(_bce_with_logits_jvp, symbolic_zeros=True)

