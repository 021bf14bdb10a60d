"""Double-word arithmetic: a number carried as the unevaluated sum ``hi + lo`` of two numbers of the compute
dtype, about twice its precision, for the few places where one rounding per operation is too many.

The building blocks are the classical error-free transformations (Dekker, Knuth; see Joldes, Muller and
Popescu, "Tight and rigorous error bounds for basic building blocks of double-word arithmetic", 2017), written
so that XLA keeps them error-free on every backend:

* a rounded sum or product passes through :func:`rounded` before its rounding error is computed, because XLA's
  algebraic simplifier rewrites ``(a + b) - a`` to ``b`` (which sets the error to 0), and a backend that fuses
  ``x - a * b`` into one fused multiply-add would otherwise compute the error of an unrounded product;
* products are split with ``lax.reduce_precision`` (no fused multiply-add is assumed), so every partial
  product is exact.

The exponential, logarithm and powers below are evaluated from these blocks and a few exact reductions only,
without XLA's ``exp`` and ``log``, so that their accuracy does not depend on the backend's libm.
"""

import fractions
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Pair(NamedTuple):
    """The number ``hi + lo``, unevaluated."""

    hi: jax.Array
    lo: jax.Array


def rounded(value: jax.Array) -> jax.Array:
    """``value``, marked as rounded: rounding to the dtype's own precision is the identity, but opaque to XLA's
    algebraic simplifier and to multiply-add fusion."""
    info = jnp.finfo(value.dtype)
    return jax.lax.reduce_precision(value, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def fast_two_sum(a: jax.Array, b: jax.Array) -> Pair:
    """a + b = hi + lo exactly, for |a| >= |b| (or a = 0)."""
    hi = rounded(a + b)
    return Pair(hi, b - (hi - a))


def two_sum(a: jax.Array, b: jax.Array) -> Pair:
    """a + b = hi + lo exactly, for any a and b."""
    hi = rounded(a + b)
    b_part = rounded(hi - a)
    return Pair(hi, (a - (hi - b_part)) + (b - b_part))


def _split(a: jax.Array) -> Pair:
    # a = hi + lo with both halves short enough (12 + 12 bits in float32, 26 + 26 in float64) that the
    # product of any two halves is exact.
    info = jnp.finfo(a.dtype)
    hi = jax.lax.reduce_precision(a, exponent_bits=info.nexp, mantissa_bits=(info.nmant + 1) // 2 - 1)
    return hi, a - hi


def two_product(a: jax.Array, b: jax.Array) -> Pair:
    """a * b = hi + lo exactly where the product is a normal number (within the smallest normal number
    below that)."""
    hi = rounded(a * b)
    # The partial products of the halves are exact only where they are normal numbers (XLA may flush the
    # others to 0), which needs |a * b| >= 2**(2 p) * tiny: smaller products are split after scaling the
    # smaller factor by 2**(2 p) (which cannot overflow), and their error is scaled back.
    info = jnp.finfo(a.dtype)
    scale = 2.0 ** (2 * (info.nmant + 1))
    small = jnp.abs(hi) < scale * info.tiny
    a_first = jnp.abs(a) <= jnp.abs(b)
    a = jnp.where(small & a_first, a * scale, a)
    b = jnp.where(small & ~a_first, b * scale, b)
    # A factor within 2**-(p/2) of the largest float has a high half that rounds up to inf: it is split after
    # multiplying it by 1/4 and the other by 4 (exact, and the other is below 4 where the product is finite),
    # which leaves the product and its error unchanged.
    a_big, b_big = jnp.abs(a) > info.max / 4, jnp.abs(b) > info.max / 4
    a = jnp.where(a_big, a * 0.25, jnp.where(b_big, a * 4, a))
    b = jnp.where(a_big, b * 4, jnp.where(b_big, b * 0.25, b))
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    error = ((a_hi * b_hi - jnp.where(small, hi * scale, hi)) + (a_hi * b_lo + a_lo * b_hi)) + a_lo * b_lo
    return Pair(hi, jnp.where(small, error * (1 / scale), error))


def constant(value: float | fractions.Fraction, dtype) -> Pair:
    """The static ``value`` (exactly as given) as a pair of numbers of ``dtype``."""
    exact = fractions.Fraction(value)
    hi = np.asarray(float(exact), dtype)
    return Pair(jnp.asarray(hi), jnp.asarray(float(exact - fractions.Fraction(float(hi))), dtype))


def add(x: Pair, y: Pair) -> Pair:
    """x + y, within about 2 eps**2 of |x| + |y|."""
    hi, lo = two_sum(x[0], y[0])
    return fast_two_sum(hi, lo + (x[1] + y[1]))


def negative(x: Pair) -> Pair:
    return Pair(-x.hi, -x.lo)


def multiply(x: Pair, y: Pair | jax.Array) -> Pair:
    """x * y (y a pair or a single number), within about 3 eps**2 relative."""
    y_hi, y_lo = y if isinstance(y, Pair) else (y, None)
    hi, lo = two_product(x[0], y_hi)
    cross = x[1] * y_hi if y_lo is None else x[0] * y_lo + x[1] * y_hi
    return fast_two_sum(hi, lo + cross)


def divide(x: Pair, y: Pair) -> Pair:
    """x / y for y != 0, within about 4 eps**2 relative: the quotient's remainder x - q y is formed exactly."""
    q = rounded(x.hi / y.hi)
    product, product_lo = two_product(q, y.hi)
    return fast_two_sum(q, (((x.hi - product) - product_lo) + (x.lo - q * y.lo)) / y.hi)


def select(condition: jax.Array, x: Pair, y: Pair) -> Pair:
    return Pair(jnp.where(condition, x.hi, y.hi), jnp.where(condition, x.lo, y.lo))


def value(x: Pair) -> jax.Array:
    """hi + lo, rounded once."""
    return x.hi + x.lo


class _ExpReduction(NamedTuple):
    """Cody-Waite reduction for exp(w) = m * 2**k in one dtype."""

    ln2_hi: float  # ln2 = ln2_hi + ln2_lo, with k * ln2_hi exact for every k that occurs
    ln2_lo: float
    lowest: float  # below it exp(w) times any finite number underflows to 0: ln(smallest subnormal / largest)
    degree: int  # the Taylor degree that reaches 0.05 eps on |r| <= ln2 / 2
    int_type: type  # the integer type, mantissa width and exponent bias that build 2**k from bits
    mantissa_bits: int
    bias: int


_EXP_REDUCTION = {
    # ln(2**-149 / 3.4e38) = -192.0 and ln(2**-1074 / 1.8e308) = -1454.2.
    np.dtype(np.float32): _ExpReduction(0.693359375, -2.12194440e-4, -200.0, 7, np.int32, 23, 127),
    np.dtype(np.float64): _ExpReduction(
        6.93147180369123816490e-01, 1.90821492927058770002e-10, -1460.0, 13, np.int64, 52, 1023
    ),
}


def _power_of_two(k: jax.Array, dtype) -> jax.Array:
    reduction = _EXP_REDUCTION[np.dtype(dtype)]
    bits = (k.astype(reduction.int_type) + reduction.bias) << reduction.mantissa_bits
    return jax.lax.bitcast_convert_type(bits, dtype)


def times_power_of_two(number, k: jax.Array):
    """number (one or a pair) * 2**k as two normal powers of two, so that a normal result is exact even where
    2**k is not. An exponent below twice the smallest normal one is taken as that (each half is then the smallest
    normal power of two, not bits below the format's range): for a number below 2**(bias - 2) the result is below
    the smallest normal number either way."""
    dtype = (number.hi if isinstance(number, Pair) else number).dtype
    k = jnp.maximum(k, 2 - 2 * _EXP_REDUCTION[np.dtype(dtype)].bias)
    k1 = jnp.floor(0.5 * k)
    first, second = _power_of_two(k1, dtype), _power_of_two(k - k1, dtype)
    if isinstance(number, Pair):
        return Pair((number.hi * first) * second, (number.lo * first) * second)
    return (number * first) * second


def reduced_exp(w: jax.Array, w_lo: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """exp(w + w_lo) = (1 + u_hi + u_lo) * 2**k with |u| <= 0.42, for w <= 88 (float32) or 709 (float64);
    arguments below the lowest worth computing are clamped (exp times any finite number underflows to 0 there).

    w = k ln2 + r1 + r2 with u_hi = r1 = w - k ln2_hi exact and r2 = w_lo - k ln2_lo small, and u_lo =
    r2 + r**2 p(r) the rest of the series: 1 + u_hi + u_lo, summed exactly (:func:`one_plus`), is within
    0.15 eps of exp(r): the rounding of r in the series, of a term below 0.07, and the series' truncation.
    """
    ln2_hi, ln2_lo, lowest, degree, *_ = _EXP_REDUCTION[np.dtype(w.dtype)]
    clamped = jnp.maximum(w, lowest)
    k = jnp.round(clamped * (1 / math.log(2)))
    r1 = clamped - k * ln2_hi
    r2 = -k * ln2_lo if w_lo is None else w_lo - k * ln2_lo
    r = r1 + r2
    p = jnp.asarray(1 / math.factorial(degree), w.dtype)
    for n in range(degree - 1, 1, -1):
        p = p * r + 1 / math.factorial(n)
    return r1, r2 + r * r * p, k


def one_plus(u_hi: jax.Array, u_lo: jax.Array) -> Pair:
    """1 + u_hi + u_lo as a normalized pair (|lo| <= ulp(hi) / 2), for |u_hi| <= 1/2 and a small u_lo."""
    hi, lo = fast_two_sum(jnp.ones_like(u_hi), u_hi)
    return fast_two_sum(hi, lo + u_lo)


_LN2 = fractions.Fraction("0.69314718055994530941723212145817656807550013436")

# ln(1 + t) = 2 atanh(z) with z = t / (2 + t): the number of odd terms of atanh past z that reach 0.01 eps for
# |z| <= 0.172 (1 + t in [sqrt(1/2), sqrt(2)]).
_ATANH_TERMS = {np.dtype(np.float32): 6, np.dtype(np.float64): 12}


def _reduced_log(x: Pair) -> tuple[jax.Array, jax.Array, jax.Array]:
    """log(x) = e ln2 + t + rest for x > 0 normal, with t exact and |t| <= 0.42, |rest| <= 0.09.

    x_hi = (1 + t) 2**e with 1 + t in [sqrt(1/2), sqrt(2)), where t = (1 + t) - 1 is exact; then
    log(1 + t) = 2 atanh(z) = 2z + 2z**3 / 3 + ... with z = t / (2 + t), and 2z = t - t z, so that only the
    small remainder -t z + 2z**3 / 3 + ... (and x_lo / x_hi) carries roundings: within about 0.12 eps.
    """
    mantissa, e = jnp.frexp(x[0])
    low = mantissa < math.sqrt(0.5)
    mantissa, e = jnp.where(low, 2 * mantissa, mantissa), jnp.where(low, e - 1, e).astype(x[0].dtype)
    t = mantissa - 1
    z = t / (2 + t)
    z2 = z * z
    terms = _ATANH_TERMS[np.dtype(x[0].dtype)]
    series = jnp.asarray(2 / (2 * terms + 1), z.dtype)
    for n in range(terms - 1, 0, -1):
        series = series * z2 + 2 / (2 * n + 1)
    return e, t, (z2 * z * series - t * z) + x[1] / x[0]


def _split_for_exponents(f: float, dtype) -> tuple[float, float]:
    # f = f_hi + f_lo with f_hi short enough that f_hi * e is exact for every binary exponent e of a normal
    # number of the dtype (|e| < 2**nexp: 11 bits in float64, 8 in float32).
    info = np.finfo(dtype)
    bits = info.nmant + 1 - info.nexp
    mantissa, exponent = math.frexp(f)
    f_hi = math.ldexp(round(math.ldexp(mantissa, bits)), exponent - bits)
    return f_hi, f - f_hi


def _fractional_power(x: Pair, f: float) -> Pair:
    """x**f for x > 0 normal and |f| < 1, as exp(f log x) with f e ln2 = n ln2 + rho ln2 (n an integer) so that
    the exponential's argument, rho ln2 + f t + f rest, is below 0.7 and within about 0.12 eps."""
    dtype = x[0].dtype
    e, t, rest = _reduced_log(x)
    f_hi, f_lo = _split_for_exponents(f, dtype)
    whole = jnp.round(f_hi * e)
    rho = f_hi * e - whole  # exact
    ln2 = constant(_LN2, dtype)
    exponent = add(multiply(ln2, rho), multiply(constant(f, dtype), t))
    exponent = fast_two_sum(exponent[0], exponent[1] + (f_lo * e * ln2[0] + f * rest))
    *u, k = reduced_exp(*exponent)
    return times_power_of_two(one_plus(*u), k + whole)


def power(x: Pair, exponent: float) -> Pair:
    """x**exponent for x > 0 normal and a static exponent > -1, within 0.15 eps relative (where the result is
    far from underflow): products of pairs for the integer part,
    :func:`_fractional_power` for the rest."""
    whole = math.floor(exponent) if exponent >= 1 else 0
    fraction = exponent - whole
    result = None
    base = x
    while whole:
        if whole & 1:
            result = base if result is None else multiply(result, base)
        whole >>= 1
        if whole:
            base = multiply(base, base)
    if fraction:
        part = _fractional_power(x, fraction)
        result = part if result is None else multiply(result, part)
    return Pair(jnp.ones_like(x.hi), jnp.zeros_like(x.hi)) if result is None else result


def log(x: Pair) -> Pair:
    """log(x) for x > 0 normal, within about 0.12 eps of |log x| (relative also near x = 1, where the reduced
    argument t = x_hi - 1 is exact; :func:`_reduced_log`)."""
    e, t, rest = _reduced_log(x)
    return add(multiply(constant(_LN2, x.hi.dtype), e), two_sum(t, rest))
