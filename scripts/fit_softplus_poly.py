"""Fit the polynomial that jaxbce uses for softplus(-a) on 0 <= a < 1.

softplus(-a) = log(2) - a/2 + log(cosh(a/2)), and log(cosh(a/2)) = z * h(z) with z = a**2. XLA's log1p is
least accurate (up to 1.4 eps) just where 1 + exp(-a) is between 1.37 and 2, so on that interval jaxbce
evaluates h as a polynomial instead. This script fits h in the Chebyshev sense with mpmath at 50 digits and
prints the coefficients (lowest degree first) for float32 and float64 together with the fit's relative error.

    python scripts/fit_softplus_poly.py
"""

import mpmath

mpmath.mp.dps = 50


def h(z):
    if z == 0:
        return mpmath.mpf(1) / 8
    return mpmath.log(mpmath.cosh(mpmath.sqrt(z) / 2)) / z


for name, degree in (("float32", 4), ("float64", 9)):
    coefficients, error = mpmath.chebyfit(h, [0, 1], degree + 1, error=True)
    coefficients = coefficients[::-1]  # chebyfit returns the highest degree first
    print(f"{name}: degree {degree}, max abs error {mpmath.nstr(error, 3)} (h >= {mpmath.nstr(h(1), 5)})")
    print("    (" + ", ".join(mpmath.nstr(c, 20) for c in coefficients) + ")")
