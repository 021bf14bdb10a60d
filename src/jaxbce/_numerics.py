"""The numerics every jaxbce core is built from: softplus and sigmoid of a non-positive argument, exact in
their tails, and the two conventions of the cores' ``custom_jvp`` rules (:func:`define_partials`,
:func:`corrected`), and a select-free softplus for the sums that XLA:CPU fuses (:func:`softplus_of_abs_fusible`).

Two building blocks carry the numerics:

* ``softplus(-|x|) = log1p(exp(-|x|))``, which lies in (0, log 2]. For |x| >= 1 XLA's ``log1p`` is accurate
  to 0.5 eps; for |x| < 1 (where XLA's ``log1p`` is off by up to 1.4 eps) it is evaluated as
  ``(log2_hi - |x|/2) + (log2_lo + log(cosh(x/2)))``, a sum of two non-negative parts with no cancellation,
  the second a polynomial in x**2 fitted by ``scripts/fit_softplus_poly.py``.
* ``sigmoid(-|x|) = e / (1 + e)`` with the same ``e = exp(-|x|)``: a quotient of positive numbers, within
  1.35 eps for every x, including the tails where ``sigmoid(x)`` rounds to 1; where its value is the result
  (gradients, ``sigmoid``, the focal factor) it is a double-word pair (``_double_word``) within 0.1 eps.

Every loss is then a sum of non-negative terms in those two quantities, and every rule's tangent is a stable
expression that JAX can differentiate again, so derivatives of every order stay finite and accurate to a few
eps (docs/numerics.md states the bounds, docs/benchmarks.md the measured errors).
"""

import functools
import math
from collections.abc import Callable

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


def define_partials(
    function: jax.custom_jvp, *, value_and_slope: Callable | None = None, plain_slope: Callable | None = None
) -> Callable[[Callable], Callable]:
    """Decorator: ``partials`` becomes the ``custom_jvp`` rule of ``function`` (with ``symbolic_zeros``).

    ``partials(*static, *arrays)`` receives the static (``nondiff_argnums``) arguments first, then the array
    arguments, and returns one zero-argument callable per array argument, the partial derivative in it. The
    rule's tangent is the sum of ``partial() * tangent`` over the arguments whose tangent is not a symbolic
    zero. Skipping those matters: a partial derivative may be infinite (d/dy at x = inf), and inf * 0 would
    put a NaN into the tangent of an argument nobody differentiates; and a partial nobody needs is never
    traced.

    ``value_and_slope(*static, *arrays)``, where given, returns the function's value and its partial derivative
    in the first array argument (the slope) from one evaluation: a double-word core forms the two from the same
    pairs, which the rule then builds once rather than twice. The slope has the derivatives of
    ``plain_slope(*static, *arrays)`` (as :func:`corrected` gives them), and ``partials`` returns the partials
    in the other array arguments only.
    """
    static_positions = tuple(sorted(function.nondiff_argnums))
    static_count = len(static_positions)

    def register(partials: Callable) -> Callable:
        value_and_slope_jvp = None
        if value_and_slope is not None:
            value_and_slope_jvp = jax.custom_jvp(value_and_slope, nondiff_argnums=tuple(range(static_count)))

            def value_and_slope_rule(*args):
                *static, primals, tangents = args
                out, slope = value_and_slope_jvp(*static, *primals)
                slope_tangent = _jvp_in_varying(functools.partial(plain_slope, *static), primals, tangents, slope)
                tangent = _tangent((lambda: slope, *partials(*static, *primals)), tangents, out)
                return (out, slope), (tangent, slope_tangent)

            value_and_slope_jvp.defjvp(value_and_slope_rule, symbolic_zeros=True)

        def rule(*args):
            *static, primals, tangents = args
            if value_and_slope_jvp is None:
                call = list(primals)
                for position, value in zip(static_positions, static, strict=True):
                    call.insert(position, value)
                out = function(*call)
                return out, _tangent(partials(*static, *primals), tangents, out)
            out, slope = value_and_slope_jvp(*static, *primals)
            return out, _tangent((lambda: slope, *partials(*static, *primals)), tangents, out)

        function.defjvp(rule, symbolic_zeros=True)
        return partials

    return register


def _has_tangent(tangent) -> bool:
    return tangent is not None and type(tangent) is not SymbolicZero


def _tangent(partials, tangents, out: jax.Array) -> jax.Array:
    """The sum of ``partial() * tangent`` over the tangents that are not symbolic zeros."""
    total = None
    for partial, tangent in zip(partials, tangents, strict=True):
        if _has_tangent(tangent):
            term = partial() * tangent
            total = term if total is None else total + term
    return jnp.zeros_like(out) if total is None else total


def _jvp_in_varying(function: Callable, primals, tangents, out):
    """The JVP of ``function(*primals)`` in the arguments whose tangent is not a symbolic zero (zeros like
    ``out`` if none, without tracing ``function``)."""
    varying = [i for i, t in enumerate(tangents) if _has_tangent(t)]

    def of_varying(*values):
        call = list(primals)
        for i, value in zip(varying, values, strict=True):
            call[i] = value
        return function(*call)

    if not varying:
        return jax.tree.map(jnp.zeros_like, out)
    return jax.jvp(of_varying, [primals[i] for i in varying], [tangents[i] for i in varying])[1]


def corrected(plain: Callable[..., jax.Array], accurate: Callable[..., jax.Array], *args) -> jax.Array:
    """``accurate(*args)``, with the derivatives of ``plain(*args)``.

    Precondition: ``plain`` is the same function in plain arithmetic, within a few ulps of ``accurate``, and
    differentiable to every order; dropping the derivative of the difference then changes the derivatives by a
    few ulps. Where ``accurate`` is a double-word evaluation, this is how its value reaches the result while
    autodiff sees only ``plain``. ``args`` are arrays (or None); the two functions close over static values
    only.

    Why functions rather than the two values: each is traced only where it is needed. ``accurate`` is evaluated
    on the primal values, never under a JVP (its derivative would be thrown away), and ``plain`` only where
    something differentiates the result: a gradient's rule (first order) traces the double-word evaluation
    alone, and each higher order adds the JVP of the plain form, not that of the double-word code. Two values
    would have both traced and differentiated at every order, a program growing with each.
    """
    return _corrected(plain, accurate, *args)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _corrected(plain, accurate, *args):
    return accurate(*args)


def _corrected_rule(plain, accurate, primals, tangents):
    # The primal output is _corrected(...) again, not accurate's value, so that a derivative of it is plain's too.
    out = _corrected(plain, accurate, *primals)
    return out, _jvp_in_varying(plain, primals, tangents, out)


_corrected.defjvp(_corrected_rule, symbolic_zeros=True)


@jax.custom_jvp
def _scaled_exp(nx: jax.Array, scale: jax.Array) -> jax.Array:
    """scale * exp(nx) for nx <= 0, rounded once at the end.

    exp(nx) = m * 2**k with m in [0.7, 1.42], and scale = s * 2**e with s in [0.5, 1): the result is
    ``(s * m) * 2**(k + e)``, the power of two as two normal ones, so that it is exact to rounding even where
    exp(nx) alone would be subnormal (and flushed to 0 by XLA; with pos_weight > 1 the loss of a hard label can
    be normal where exp(-|x|) is not), and never overflows before the power of two where the scale is as large
    as |x| (the entropy's |x| sigmoid(-|x|) at |x| = 1.7e308 is 0, not inf).
    """
    return _scaled_exp_of_reduced(nx, dw.reduced_exp(nx), scale)


def _scaled_exp_of_reduced(nx, reduced, scale):
    """``_scaled_exp(nx, scale)`` from ``reduced = dw.reduced_exp(nx)`` (without a derivative)."""
    u_hi, u_lo, k = reduced
    mantissa, exponent = jnp.frexp(scale)
    product = dw.times_power_of_two(mantissa * (1 + (u_hi + u_lo)), k + exponent.astype(k.dtype))
    return jnp.where(jnp.isnan(nx), nx, product)


@define_partials(_scaled_exp)
def _scaled_exp_partials(nx, scale):
    return lambda: _scaled_exp(nx, scale), lambda: _scaled_exp(nx, jnp.ones_like(scale))


def times(coefficient: jax.Array | None, value: jax.Array) -> jax.Array:
    return value if coefficient is None else coefficient * value


def in_tail(nx: jax.Array) -> jax.Array:
    # Where exp(nx) < eps / 2, log1p(e) and e / (1 + e) both equal e to rounding.
    return nx < math.log(0.5 * np.finfo(nx.dtype).eps)


def neg_abs(x: jax.Array) -> jax.Array:
    # -|x| as a select, so that its derivative at 0 is the one-sided +1 rather than sign(0) = 0; the values
    # and derivatives built on it then take the x <= 0 branch at 0, where they are exact (0.5 - y, 0.25).
    return jnp.where(x > 0, -x, x)


def _softplus_near_zero(nx: jax.Array, half: float | jax.Array = 0.5) -> jax.Array:
    """log1p(exp(nx)) for -1 <= nx <= 0, as (log2_hi + nx / 2) + (log2_lo + log(cosh(nx / 2)))."""
    hi, lo = _LOG2_SPLIT[np.dtype(nx.dtype)]
    z = nx * nx
    coefficients = _LOGCOSH_COEFFICIENTS[np.dtype(nx.dtype)]
    h = jnp.asarray(coefficients[-1], nx.dtype)
    for c in coefficients[-2::-1]:
        h = h * z + c
    return (hi + half * nx) + (lo + z * h)


def softplus_nonpositive(nx: jax.Array, coefficient: jax.Array | None = None) -> jax.Array:
    """coefficient * log1p(exp(nx)) for nx <= 0 (coefficient None: 1); NaN passes through."""
    near_zero = _softplus_near_zero(nx)
    e = _scaled_exp(nx, jnp.ones_like(nx))
    middle = jnp.log1p(e)
    tail = e if coefficient is None else _scaled_exp(nx, coefficient)
    return jnp.where(nx > -1, times(coefficient, near_zero), jnp.where(in_tail(nx), tail, times(coefficient, middle)))


def opaque_constants(dtype, *values: float) -> tuple[jax.Array, ...]:
    """Scalars of ``dtype`` that XLA cannot identify with equal constants elsewhere in the program.

    A broadcast constant shared by a reduction's operand and another loop (the gradient's) is written to memory
    as an array and read back by both; these stay private to the expression that uses them.
    """
    return jax.lax.optimization_barrier(tuple(jnp.asarray(v, dtype) for v in values))


def softplus_of_abs_fusible(ax: jax.Array) -> jax.Array:
    """log1p(exp(-ax)) for ax = |x|, in operations that XLA's CPU backend fuses into a reduction.

    XLA:CPU hands a sum, with the chain of elementwise operations that feeds it, to YNNPACK, which takes
    arithmetic, min, max, floor, exp and log1p but no compare, select or ``reduce_precision``: any of those
    splits the loss into an array written to memory and read back, more than twice the time. So
    the branch is a product with a 0-or-1 factor made by ``floor``, and the near-zero polynomial (where
    log1p of an argument near 1 is off by up to 3 eps) is taken on ``min(ax, 1)`` so that both branches are
    finite. ``far + 1 * (near - far)`` is ``near`` exactly: the two agree to a few ulps, so their difference is
    exact (Sterbenz). The rest is the backend's ``exp`` and ``log1p``: the BCE terms built on this are within
    the contract's bounds for hard labels as YNNPACK evaluates them; NaN passes through ``far``.
    """
    zero, half, one = opaque_constants(ax.dtype, 0, 0.5, 1)
    near = _softplus_near_zero(-jnp.minimum(ax, one), half)
    far = jnp.log1p(jnp.exp(-ax))
    below_one = jnp.maximum(one - jnp.floor(ax), zero)  # 1 for ax < 1, else 0 (inf included)
    return far + below_one * (near - far)


def sigmoid_nonpositive(nx: jax.Array, coefficient: jax.Array | None = None) -> jax.Array:
    """coefficient * sigmoid(nx) = coefficient * e / (1 + e) for nx <= 0, sharing e = exp(nx) with
    ``softplus_nonpositive``."""
    e = _scaled_exp(nx, jnp.ones_like(nx))
    tail = e if coefficient is None else _scaled_exp(nx, coefficient)
    return jnp.where(in_tail(nx), tail, times(coefficient, e / (1 + e)))


def sigmoid_pair(nx: jax.Array, reduced: tuple[jax.Array, ...] | None = None) -> dw.Pair:
    """sigmoid(nx) = e / (1 + e) for nx <= 0 as a pair, within about 0.1 eps: e = e_hi + e_lo and 1 + e =
    d_hi + d_lo are kept exactly, and so is the remainder e_hi - s_hi d_hi of the quotient. ``reduced`` is
    ``dw.reduced_exp(nx)`` where the caller has it."""
    *u, k = dw.reduced_exp(nx) if reduced is None else reduced
    e, e_lo = dw.times_power_of_two(dw.one_plus(*u), k)
    d, d_lo = dw.fast_two_sum(jnp.ones_like(e), e)
    s = jnp.where(jnp.isnan(nx), nx, e / d)
    product, product_lo = dw.two_product(s, d)
    return dw.Pair(s, ((e - product) - product_lo + (e_lo - s * (d_lo + e_lo))) / d)


def sigmoid_difference(nx: jax.Array, a: jax.Array, c: jax.Array | None) -> jax.Array:
    """c * sigmoid(nx) - a for nx <= 0 (c None: 1), with the value of a compensated evaluation and the
    derivatives of the plain one.

    sigmoid(nx) = e / (1 + e) carries three roundings (of e, of 1 + e and of the quotient) that add up to
    1.35 eps; here sigmoid(nx) is a pair (``sigmoid_pair``) and a is subtracted exactly (TwoSum), so that
    what remains is the rounding of c * sigmoid and of the result.
    """
    return _sigmoid_differences(nx, c, a)[0]


def _sigmoid_differences(nx: jax.Array, c: jax.Array | None, *offsets: jax.Array) -> tuple[jax.Array, ...]:
    """c * sigmoid(nx) - a for each a in ``offsets``, from one evaluation of sigmoid(nx)."""
    return corrected(_sigmoid_differences_plain, _sigmoid_differences_accurate, nx, c, *offsets)


def _sigmoid_differences_plain(nx, c, *offsets):
    s = sigmoid_nonpositive(nx, c)
    return tuple(s - a for a in offsets)


def _sigmoid_differences_accurate(nx, c, *offsets):
    reduced = dw.reduced_exp(nx)
    q, q_lo = sigmoid_pair(nx, reduced)
    if c is not None:
        q, q_lo = c * q, c * q_lo
    # In the tail sigmoid(nx) is exp(nx) to rounding, scaled before it is rounded (``_scaled_exp``).
    tail = _scaled_exp_of_reduced(nx, reduced, jnp.ones_like(nx) if c is None else c)
    differences = []
    for a in offsets:
        hi, lo = dw.two_sum(q, -a)
        differences.append(jnp.where(in_tail(nx), tail - a, hi + (lo + q_lo)))
    return tuple(differences)


def weighted(coefficient: jax.Array, term: jax.Array) -> jax.Array:
    """``coefficient * term``, taking ``0 * inf`` as 0: the one rule for a term that its coefficient removes (a
    hard label's absent term at an infinite logit, a zero weight, a masked row). A NaN term still propagates,
    and the derivative in the coefficient stays the term wherever it is finite."""
    # The select is on the term, not on the product: a select's transpose zeroes the cotangent, which the product
    # would then multiply by the infinite term (0 * inf = NaN in the coefficient's derivative).
    return coefficient * jnp.where((coefficient == 0) & jnp.isinf(term), 0, term)


@jax.custom_jvp
def softplus(x: jax.Array) -> jax.Array:
    """log(1 + exp(x)), exact to rounding for every x, with derivative sigmoid(x)."""
    return jnp.maximum(x, 0) + softplus_nonpositive(neg_abs(x))


@define_partials(softplus)
def _softplus_partials(x):
    return (lambda: sigmoid(x),)


def sigmoid(x: jax.Array) -> jax.Array:
    """1 / (1 + exp(-x)) as sigmoid(-|x|) - 0 or -(sigmoid(-|x|) - 1), within 1 eps, tails included."""
    d = sigmoid_difference(neg_abs(x), jnp.where(x > 0, 1, 0).astype(x.dtype), None)
    return jnp.where(x > 0, -d, d)


def sigmoids(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sigmoid(x), sigmoid(-x)), each as :func:`sigmoid` gives it (values and derivatives), from one
    evaluation of sigmoid(-|x|): for x > 0 they are 1 - sigmoid(-|x|) and sigmoid(-|x|), for x <= 0 the
    other way round."""
    above = jnp.where(x > 0, 1, 0).astype(x.dtype)
    d_plus, d_minus = _sigmoid_differences(neg_abs(x), None, above, 1 - above)
    return jnp.where(x > 0, -d_plus, d_plus), jnp.where(x > 0, d_minus, -d_minus)


def smoothed_labels(y: jax.Array, label_smoothing: float, one: float | jax.Array = 1) -> tuple[jax.Array, jax.Array]:
    """(y_s, 1 - y_s) for the Keras rule y_s = y * (1 - s) + s / 2 (``one``: 1, or an opaque 1).

    Each is a sum of two non-negative terms, so 1 - y_s is exact to rounding even where y_s is close to 1
    (forming it as 1 - y_s would cost up to 1 / (1 - y_s) eps).
    """
    if label_smoothing == 0:
        return y, one - y
    keep, half = 1 - label_smoothing, 0.5 * label_smoothing
    return y * keep + half, (one - y) * keep + half


def round_stochastically(value: jax.Array, dtype, key: jax.Array) -> jax.Array:
    """``value`` rounded to the narrower float ``dtype``: to one of its two neighbours there, the farther one with
    probability (distance to the nearer) / (their spacing), so that the expected result is ``value`` itself.

    Why. bfloat16 has 8 significant bits: an update smaller than half a weight's spacing (2^-9 of the weight)
    rounds back to the old weight, so a 16-bit classifier stops learning once its steps are small, and an Adam
    second moment, ``0.999 nu + 0.001 g^2``, never moves at all. Rounded stochastically each update is kept in
    expectation (Gupta et al., ICML 2015; ELMO, ICML 2025, trains its bfloat16 classifier this way).

    ``value - nearest`` is exact in ``value``'s dtype (Sterbenz: the two are within a factor of two), and the
    spacing of two neighbours is a power of two, so the probability is rounded only once, by the division; it is
    compared with a uniform number of 2^-23 resolution. A NaN stays NaN, and a value past ``dtype``'s largest
    finite number rounds to nearest (inf, or the largest), as ``astype`` does.
    """
    nearest = value.astype(dtype)
    back = nearest.astype(value.dtype)
    other = jnp.nextafter(nearest, jnp.where(value > back, jnp.inf, -jnp.inf).astype(dtype))
    farther = (value - back) / (other.astype(value.dtype) - back)  # in [0, 1/2]; NaN for inf and NaN
    return jnp.where(jax.random.uniform(key, value.shape, value.dtype) < farther, other, nearest)
