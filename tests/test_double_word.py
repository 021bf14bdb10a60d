"""Double-word arithmetic: the error-free transformations are exact (checked in rational arithmetic with
``fractions``), and the exponential and powers are within their stated errors of 50-digit mpmath."""

import fractions

import jax
import mpmath
import numpy as np
import pytest

from jax_compat import enable_x64
from jaxbce import _double_word as dw

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def _exact(*values):
    return [fractions.Fraction(float(v)) for v in values]


def _magnitudes(rng, dtype, n, low, high):
    return (rng.choice([-1, 1], n) * 10 ** rng.uniform(low, high, n)).astype(dtype)


@DTYPES
def test_sums_are_exact(dtype):
    rng = np.random.default_rng(0)
    a, b = _magnitudes(rng, dtype, 4000, -20, 20), _magnitudes(rng, dtype, 4000, -20, 20)
    big, small = np.where(np.abs(a) >= np.abs(b), a, b), np.where(np.abs(a) >= np.abs(b), b, a)
    with enable_x64(dtype == np.float64):
        pairs = {"two_sum": jax.jit(dw.two_sum)(a, b), "fast_two_sum": jax.jit(dw.fast_two_sum)(big, small)}
    for name, (hi, lo) in pairs.items():
        for values in zip(a, b, np.asarray(hi), np.asarray(lo), strict=True):
            exact_a, exact_b, exact_hi, exact_lo = _exact(*values)
            assert exact_hi + exact_lo == exact_a + exact_b, (name, values)


@DTYPES
def test_products_are_exact_down_to_the_smallest_normal_number(dtype):
    """Exact where every partial product is normal; within the smallest normal number (the flushed part)
    for smaller products, which are split after scaling."""
    rng = np.random.default_rng(1)
    info = np.finfo(dtype)
    low = np.log10(info.tiny) / 2
    a, b = _magnitudes(rng, dtype, 4000, low, 0), _magnitudes(rng, dtype, 4000, low, 0)
    with enable_x64(dtype == np.float64):
        hi, lo = (np.asarray(v) for v in jax.jit(dw.two_product)(a, b))
    tiny = fractions.Fraction(float(info.tiny))
    for values in zip(a, b, hi, lo, strict=True):
        exact_a, exact_b, exact_hi, exact_lo = _exact(*values)
        assert abs(exact_hi + exact_lo - exact_a * exact_b) < tiny, values
        if abs(exact_a * exact_b) >= 2 ** (2 * (info.nmant + 1)) * tiny:
            assert exact_hi + exact_lo == exact_a * exact_b, values


def _mpf(hi, lo=0.0):
    return mpmath.mpf(float(hi)) + mpmath.mpf(float(lo))


def _relative_eps(got_hi, got_lo, ref, dtype):
    return float(abs(_mpf(got_hi, got_lo) - ref) / abs(ref)) / np.finfo(dtype).eps


@DTYPES
def test_reduced_exp(dtype):
    """exp(w) = (1 + u_hi + u_lo) 2**k within 0.15 eps (0.14 measured in float32) where it is normal."""
    mpmath.mp.dps = 50
    lowest = np.log(np.finfo(dtype).tiny)
    w = np.concatenate([np.linspace(lowest, 0.7, 3001), [0.0, -1e-30, -np.log(2) / 2]]).astype(dtype)
    with enable_x64(dtype == np.float64):
        *u, k = jax.jit(dw.reduced_exp)(w)
        hi, lo = jax.jit(lambda *u: dw.one_plus(*u))(*u)
    worst = max(
        _relative_eps(got_hi, got_lo, mpmath.exp(_mpf(x) - int(shift) * mpmath.log(2)), dtype)
        for x, got_hi, got_lo, shift in zip(w, np.asarray(hi), np.asarray(lo), np.asarray(k), strict=True)
    )
    assert worst <= 0.15, worst


@DTYPES
@pytest.mark.parametrize("exponent", [0.3, 0.5, 0.999, 1.0, 1.7, 2.0, 3.0, 5.0, 7.25, -0.5, -0.999])
def test_power(dtype, exponent):
    """x**exponent within 0.2 eps (0.14 measured) for pairs x in (0, 1] whose result is far from underflow
    (x**exponent >= tiny**(1/2)), against mpmath at 50 digits on the exact pair."""
    mpmath.mp.dps = 50
    rng = np.random.default_rng(2)
    info = np.finfo(dtype)
    low = np.log10(info.tiny) / 2 / max(exponent, 1)
    hi = np.concatenate([10 ** rng.uniform(low, 0, 600), [1.0, 0.5, 1 - info.epsneg]])
    hi = hi.astype(dtype)
    lo = (hi * rng.uniform(-0.5, 0.5, hi.size) * info.epsneg).astype(dtype)
    lo = np.where(hi == 1, 0, lo).astype(dtype)
    with enable_x64(dtype == np.float64):
        got_hi, got_lo = jax.jit(lambda *x: dw.power(dw.Pair(*x), exponent))(hi, lo)
    worst = max(
        _relative_eps(gh, gl, _mpf(h, low) ** exponent, dtype)
        for h, low, gh, gl in zip(hi, lo, np.asarray(got_hi), np.asarray(got_lo), strict=True)
    )
    assert worst <= 0.2, worst
