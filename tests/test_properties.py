"""Property-based tests (hypothesis) for every loss, over dtypes, shapes and hard values.

Profiles (tests/conftest.py): "ci" (default, 100 fixed examples per property) and "thorough" (2,000 new ones on
each run); ``make test-thorough`` runs these properties with the second. References are float64 NumPy formulas
written independently of the package (``reference.float64_loss_and_gradient``).
"""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import reference
from jax_compat import enable_x64
from jaxbce._arguments import Role
from loss_table import LOSSES

# The public losses: every name of the API defined in jaxbce._losses (not the value-check helpers).
FUNCTIONS = tuple(LOSSES)  # every registered elementwise loss
DTYPES = (np.float16, jnp.bfloat16, np.float32, np.float64)
# (shape, broadcastable shapes for weight / pos_weight / where): scalars, 0-size and ragged broadcasts.
# One broadcast shape per example serves weight, pos_weight and where, which keeps the number of distinct
# compiled programs (and so the run time) small.
SHAPES = {
    (): [()],
    (0, 4): [(4,)],
    (3, 4): [(), (4,), (3, 4)],
}
# Static values drawn for an array argument of Role.FRACTION (the focal loss's alpha); None is no alpha.
FRACTIONS = (0.25, None, 0.5)
# Values where 1 - y, 1 - p and 1 / pos_weight are exact in every dtype, so symmetries hold to rounding.
EXACT_LABELS = tuple(k / 64 for k in range(65))
EXACT_POS_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
SPECIAL_LOGITS = (0.0, -0.0, 1e-40, -1e-40, 1e-8, 0.5, 1.0, 17.0, 30.0, 88.0, 100.0, 1e4, 1e30, 1e38)


def _x64(dtype):
    return enable_x64(np.dtype(dtype) == np.float64)


@functools.cache
def _evaluator(name, options, reduction="none"):
    """A jitted (value, gradient in the first argument) for one function and its static options, called with
    the arguments that ``tests/loss_table.py`` says it takes."""
    row = LOSSES[name]
    function = functools.partial(row.function, **dict(options), reduction=reduction)
    takes_pos_weight = "pos_weight" in dict(row.arrays)

    def value(first, second, weight, pos_weight, where):
        kwargs = {"where": where}
        if row.takes_weight:
            kwargs["weight"] = weight
        if takes_pos_weight:
            kwargs["pos_weight"] = pos_weight
        return function(*(first, second)[: len(row.positional)], **kwargs)

    def total(*args):
        return jnp.sum(value(*args).astype(jnp.float32 if args[0].dtype != jnp.float64 else jnp.float64))

    return jax.jit(value), jax.jit(jax.grad(total, argnums=(0, 1, 2, 3)))


def _flush_subnormals(array):
    return np.where(np.abs(array) < np.finfo(np.float32).tiny, 0, array).astype(array.dtype)


def _roles(name):
    """The roles of the loss's first and second positional arguments (LABELS for a loss of one argument)."""
    row = LOSSES[name]
    roles = dict(row.arrays)
    return roles[row.positional[0]], roles[row.positional[1]] if len(row.positional) > 1 else Role.LABELS


@st.composite
def cases(draw, finite=True, exact=False):
    name = draw(st.sampled_from(FUNCTIONS))
    first_role, second_role = _roles(name)
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from(list(SHAPES)))
    info = jnp.finfo(dtype)
    limit = float(info.max) if not finite else min(float(info.max), 1e30)
    if first_role is Role.PROBABILITIES:
        values = st.sampled_from(EXACT_LABELS) if exact else st.floats(0, 1, width=32)
    else:
        magnitudes = st.one_of(st.sampled_from(SPECIAL_LOGITS), st.floats(0, 200), st.floats(0, limit))
        values = st.builds(lambda m, s: s * min(m, limit), magnitudes, st.sampled_from((1.0, -1.0)))
    first = draw(hnp.arrays(np.float64, shape, elements=values)).astype(dtype)
    if first_role is Role.PROBABILITIES:  # subnormal probabilities read as 0 on CPU, as subnormal weights do
        first = _flush_subnormals(first)
    if second_role is Role.LOGITS:
        second = draw(hnp.arrays(np.float64, shape, elements=values)).astype(dtype)
    else:
        labels = st.sampled_from(EXACT_LABELS) if exact else st.one_of(st.sampled_from((0.0, 1.0)), st.floats(0, 1))
        second = draw(hnp.arrays(np.float64, shape, elements=labels)).astype(
            dtype if dtype != np.float16 else np.float32
        )
    broadcast = draw(st.sampled_from(SHAPES[shape]))  # shared by weight, pos_weight and where
    weights = st.floats(0, 8, width=32)
    pos_weights = st.sampled_from(EXACT_POS_WEIGHTS) if exact else weights
    # No subnormal weights: XLA on CPU treats subnormal inputs as 0 (the contract allows it).
    weight = _flush_subnormals(draw(hnp.arrays(np.float32, broadcast, elements=weights)))
    pos_weight = _flush_subnormals(draw(hnp.arrays(np.float32, broadcast, elements=pos_weights)))
    where = draw(hnp.arrays(np.bool_, broadcast, elements=st.booleans()))
    # Every static option with the sample values of tests/loss_table.py; a fraction array as a static number.
    row = LOSSES[name]
    options = tuple((option, draw(st.sampled_from(values))) for option, values in row.options.items())
    options += tuple((array, draw(st.sampled_from(FRACTIONS))) for array, role in row.arrays if role is Role.FRACTION)
    return name, options, dtype, first, second, weight, pos_weight, where


def _tiny(dtype):
    """Absolute errors that do not count: below the smallest normal number of the result's dtype, and, in
    float32 compute, up to 8 times float32's: XLA flushes subnormal intermediates to zero, so a result just
    above the normal range that is a sum of subnormal terms (e**-88 and its neighbours) may read 0."""
    return max(float(jnp.finfo(dtype).tiny), 8 * float(jnp.finfo(np.float32).tiny))


def _tolerance(dtype):
    """Relative tolerance in the result: 16-bit results are rounded once to their dtype; wider ones are
    allowed a few eps of the compute dtype."""
    eps = float(jnp.finfo(dtype).eps)
    return eps if np.dtype(dtype).itemsize == 2 else 8 * eps


@given(cases(finite=True))
def test_finite_non_negative_and_close_to_float64(case):
    name, options, dtype, x, y, weight, pos_weight, where = case
    with _x64(dtype):
        value_fn, grad_fn = _evaluator(name, options)
        loss = np.asarray(value_fn(x, y, weight, pos_weight, where), np.float64)
        grads = grad_fn(x, y, weight, pos_weight, where)
    ref = reference.float64_loss_and_gradient(name, options, x, y, weight, pos_weight)
    ref_loss, ref_grad = ref.loss, ref.grad
    keep = np.broadcast_to(where, np.shape(x))
    # Finite wherever the exact value is representable in the result's dtype (float16 overflows at 65504).
    largest = 0.5 * float(jnp.finfo(dtype).max)
    representable = np.abs(ref_loss) <= largest
    assert np.isfinite(loss[representable & keep]).all()
    if dict(options).get("poly_epsilon", 0.0) >= 0:  # a negative Poly-1 term may take the loss below 0
        assert (loss[~np.isnan(loss)] >= 0).all()
    assert (loss[~keep] == 0).all()
    first_grad = np.asarray(grads[0], np.float64)
    assert np.isfinite(first_grad[(np.abs(ref_grad) <= largest) & keep & representable]).all()
    rtol, tiny = _tolerance(dtype), _tiny(dtype)
    half = np.dtype(dtype).itemsize == 2  # inputs rounded to 16 bits move the loss by |dl/dx * x| * eps
    bound = rtol * ref.loss_size + ref.loss_floor + tiny + (2 * rtol * np.abs(ref_grad * x) if half else 0)
    ok = ~representable | ~keep | (np.abs(loss - ref_loss) <= bound)
    assert ok.all(), (loss[~ok], ref_loss[~ok], np.asarray(x)[np.broadcast_to(~ok, np.shape(x))])


@given(cases(finite=True))
def test_gradient_matches_closed_form(case):
    name, options, dtype, x, y, weight, pos_weight, where = case
    assume(np.dtype(dtype).itemsize > 2)  # 16-bit gradients are the float32 ones rounded: covered above
    with _x64(dtype):
        grad = np.asarray(_evaluator(name, options)[1](x, y, weight, pos_weight, where)[0], np.float64)
    ref = reference.float64_loss_and_gradient(name, options, x, y, weight, pos_weight)
    ref_grad, size = ref.grad, ref.grad_size
    ref_grad = np.where(np.broadcast_to(where, np.shape(x)), ref_grad, 0.0)
    rtol = _tolerance(dtype)
    ok = ~np.isfinite(ref_grad) | (np.abs(grad - ref_grad) <= rtol * size + _tiny(dtype))
    assert ok.all(), (grad[~ok], ref_grad[~ok], np.asarray(x)[~ok])


@given(cases(finite=True, exact=True))
def test_symmetry(case):
    """l(x, y) = l(-x, 1 - y), with pos_weight -> 1 / pos_weight (times pos_weight), alpha -> 1 - alpha,
    gamma_pos <-> gamma_neg (the asymmetric loss without a clip), p -> 1 - p, t -> -t."""
    name, options, dtype, x, y, weight, pos_weight, where = case
    assume(dict(options).get("clip", 0.0) == 0.0)  # the asymmetric loss's clip has no mirror image
    flipped = dict(options)
    if flipped.get("alpha") is not None:
        flipped["alpha"] = 1 - flipped["alpha"]
    if "gamma_pos" in flipped:  # the asymmetric loss: the negative term mirrors the positive one, gammas swapped
        flipped["gamma_pos"], flipped["gamma_neg"] = flipped["gamma_neg"], flipped["gamma_pos"]
    flipped_options = tuple(flipped.items())
    first_role, second_role = _roles(name)
    flipped_first = (1 - x if first_role is Role.PROBABILITIES else -x).astype(x.dtype)
    flipped_second = (-y if second_role is Role.LOGITS else 1 - y).astype(y.dtype)
    takes_pos_weight = "pos_weight" in dict(LOSSES[name].arrays)
    # Poly-1's term mirrors itself and is not scaled by pos_weight, which the mirror image scales.
    assume(not (takes_pos_weight and dict(options).get("poly_epsilon", 0.0)))
    scale = pos_weight if takes_pos_weight else 1.0
    flipped_pos_weight = (1 / pos_weight if takes_pos_weight else pos_weight).astype(np.float32)
    if takes_pos_weight:
        assume((pos_weight > 0).all())
    with _x64(dtype):
        loss = np.asarray(_evaluator(name, options)[0](x, y, weight, pos_weight, where), np.float64)
        mirrored = _evaluator(name, flipped_options)[0](
            flipped_first, flipped_second, weight, flipped_pos_weight, where
        )
    mirrored = np.asarray(mirrored, np.float64) * np.broadcast_to(scale, np.shape(loss))
    finite = np.isfinite(loss) & np.isfinite(mirrored)
    # Both sides finite wherever neither can overflow the result's dtype (pos_weight up to 4 scales one side).
    safe = np.abs(loss) * 16 < float(jnp.finfo(dtype).max)
    assert (np.isfinite(loss) == np.isfinite(mirrored))[safe].all()
    rtol = 2 * _tolerance(dtype)
    assert np.allclose(loss[finite], mirrored[finite], rtol=rtol, atol=_tiny(dtype))


@given(cases(finite=False), st.sampled_from((np.nan, np.inf, -np.inf, 3e38)))
def test_masked_values_change_nothing_bit_for_bit(case, garbage):
    name, options, dtype, x, y, weight, pos_weight, where = case
    keep = np.broadcast_to(where, np.shape(x))

    def dirty(a):
        if np.shape(a) != np.shape(x):
            return a
        with np.errstate(over="ignore"):  # 3e38 becomes inf in 16-bit dtypes: garbage either way
            return np.where(keep, a, garbage).astype(a.dtype)

    # "weighted_mean": garbage weights would reach the denominator too. Eager runs agree with these jitted ones
    # (test_jit_and_eager_agree), so this is the one test of the rule for the elementwise losses.
    value_fn, grad_fn = _evaluator(name, options, "weighted_mean")
    with _x64(dtype):
        clean = value_fn(x, y, weight, pos_weight, where), grad_fn(x, y, weight, pos_weight, where)
        noisy = value_fn(dirty(x), dirty(y), dirty(weight), dirty(pos_weight), where)
        noisy = noisy, grad_fn(dirty(x), dirty(y), dirty(weight), dirty(pos_weight), where)
    # float64 views: exact for every dtype, and NumPy then matches NaN with NaN (it does not for bfloat16)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64)), clean, noisy
    )


@given(cases(finite=False))
def test_jit_and_eager_agree(case):
    name, options, dtype, x, y, weight, pos_weight, where = case
    value_fn, _ = _evaluator(name, options)
    with _x64(dtype):
        compiled = np.asarray(value_fn(x, y, weight, pos_weight, where), np.float64)
        with jax.disable_jit():
            eager = np.asarray(value_fn(x, y, weight, pos_weight, where), np.float64)
    np.testing.assert_allclose(eager, compiled, rtol=2 * _tolerance(dtype), atol=_tiny(dtype))


@given(cases(finite=False))
def test_nan_in_nan_out_and_no_nan_from_infinities(case):
    name, options, dtype, x, y, weight, pos_weight, where = case
    keep = np.broadcast_to(where, np.shape(x))
    with _x64(dtype):
        loss = np.asarray(_evaluator(name, options)[0](x, y, weight, pos_weight, where), np.float64)
        nan_x = np.where(keep, np.nan, x).astype(x.dtype)
        nan_loss = np.asarray(_evaluator(name, options)[0](nan_x, y, weight, pos_weight, where), np.float64)
    assert np.isnan(nan_loss[keep]).all()  # NaN in, NaN out: never silently 0
    assert (nan_loss[~keep] == 0).all()
    # Infinite logits (or teacher logits) give limits, not NaN (probabilities are finite by construction).
    if _roles(name)[1] is Role.LOGITS:
        assume(not (np.isinf(x) & np.isinf(y) & (np.sign(x) != np.sign(y))).any())  # KL(0 || 1) = inf, fine
    assert not np.isnan(loss).any()
