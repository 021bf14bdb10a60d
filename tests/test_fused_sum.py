"""The fused sums (``_reductions.sum_terms``) of the BCE with logits, the BCE from probabilities with hard labels
and the binary entropy: on CPU, float32 sums of at least ``FUSIBLE_MIN_ELEMENTS`` terms are taken of select-free
terms in one YNNPACK pass, the exact path runs where that sum is NaN or tiny, and every derivative is the exact core's.
References: 50-digit mpmath (tests/reference.py) for the terms, float64 NumPy (examples/common.py's
``bce_float64``) for sums, and the exact path itself (the elementwise losses, ``reduction="none"``) for what
must not change."""

import functools
import math
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from jaxbce import (
    _arguments,
    _elementwise,
    _pipeline,
    _reductions,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_entropy,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
from common import bce_float64

EPS32 = float(np.finfo(np.float32).eps)
N = 2 * _reductions.FUSIBLE_MIN_ELEMENTS
SETTINGS = ((1.0, 0.0), (3.0, 0.0), (0.3, 0.0), (1.0, 0.1))
LABELS = (0.0, 1.0, 0.05, 0.3, 0.7, 1 - 1e-3)


def _inputs(seed, n=N, *, labels=jnp.float32):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=n) * rng.choice([0.3, 3.0, 30.0], size=n)).astype(np.float32)
    y = rng.uniform(size=n) > 0.5
    return jnp.asarray(x), jnp.asarray(y, labels)


def _entry(compiled_text: str) -> str:
    return compiled_text[compiled_text.index("ENTRY") :]


def _array_outputs(entry: str, n: int) -> list[str]:
    """The instructions of the entry computation that write a float array of n elements."""
    return re.findall(rf"(%\S+) = f32\[{n}\]\{{0\}} (?:fusion|custom-call)\(", entry)


@functools.cache
def _term_references(pos_weight, label_smoothing):
    x = reference.logit_grid(np.float32)
    grid_x = np.repeat(x[None, :], len(LABELS), axis=0)
    grid_y = np.repeat(np.array(LABELS, np.float32)[:, None], len(x), axis=1)
    loss, _, _ = reference.bce_with_logits(grid_x, grid_y, pos_weight=pos_weight, label_smoothing=label_smoothing)
    return grid_x, grid_y, loss


def _as_ynnpack_evaluates(terms, *arrays) -> np.ndarray:
    """``terms(*arrays)`` evaluated by YNNPACK: summed with a zero over a trailing axis, which XLA:CPU hands to
    YNNPACK whole."""

    @jax.jit
    def evaluate(*arrays):
        return jnp.sum(terms(*arrays)[..., None] * jnp.array([1.0, 0.0], jnp.float32), axis=-1)

    arrays = [jnp.asarray(a) for a in arrays]
    assert "ynn_fusion" in evaluate.lower(*arrays).compile().as_text()
    return np.asarray(evaluate(*arrays))


@pytest.mark.parametrize(("pos_weight", "label_smoothing"), SETTINGS)
def test_fusible_terms_are_within_the_contract_bound_where_ynnpack_evaluates_them(pos_weight, label_smoothing):
    """Each fusible term, evaluated by YNNPACK, is within the contract's loss bound of 50-digit mpmath: 1.5 eps
    for plain labels, 2.5 with pos_weight or label smoothing (measured: 0.89 and 1.23 eps for hard and soft
    labels, 1.82 with pos_weight 3)."""
    x, y, ref = _term_references(pos_weight, label_smoothing)
    pw = None if pos_weight == 1.0 else jnp.float32(pos_weight)
    got = _as_ynnpack_evaluates(lambda x, y: _elementwise.bce_with_logits_fusible(x, y, pw, label_smoothing), x, y)
    bound = 1.5 if pos_weight == 1.0 and label_smoothing == 0.0 else 2.5
    # Where exp(-|x|) is subnormal (XLA flushes it to 0) a term c * exp(-|x|) with c = pw y + 1 - y > 1 is 0
    # rather than a number below c * 2**-126: those terms are left out (the docstring of the fusible terms).
    counted = ref >= max(pos_weight, 1.0) * np.finfo(np.float32).tiny
    error = reference.eps_error(got, ref, dtype=np.float32) * counted
    assert error.max() <= bound, (error.max(), x.ravel()[error.argmax()], y.ravel()[error.argmax()])


PROBABILITIES = np.concatenate(
    [np.linspace(0, 1, 2001), np.geomspace(1e-30, 0.5, 300), 1 - np.geomspace(1e-7, 0.5, 300)]
).astype(np.float32)


@pytest.mark.parametrize(("pos_weight", "label_smoothing"), [(None, 0.0), (3.0, 0.0), (None, 0.1)])
def test_probability_terms_for_hard_labels_are_within_the_contract_bound(pos_weight, label_smoothing):
    """The fusible terms of the BCE from probabilities, for labels 0 and 1 as YNNPACK evaluates them, are within
    1.5 eps of 50-digit mpmath (2.5 with pos_weight or smoothing; measured 1.38, 1.45, 1.43). Soft labels reach
    1.72 eps with YNNPACK's log, which is why only bool and integer labels take this path."""
    p = np.tile(PROBABILITIES, 2)
    y = np.repeat(np.float32([0, 1]), len(PROBABILITIES))
    ref = reference.value("bce_with_probabilities", p, y, pos_weight, label_smoothing=label_smoothing)
    pw = None if pos_weight is None else jnp.float32(pos_weight)
    got = _as_ynnpack_evaluates(
        lambda p, y: _elementwise.bce_with_probabilities_fusible(p, y, pw, label_smoothing), p, y
    )
    bound = 1.5 if pos_weight is None and label_smoothing == 0.0 else 2.5
    assert reference.eps_error(got, ref, dtype=np.float32).max() <= bound


def test_entropy_terms_are_within_the_contract_bound():
    """The fusible terms of the binary entropy as YNNPACK evaluates them are within 1.5 eps of 50-digit mpmath
    (measured 1.31) where exp(-|x|) is normal; beyond (|x| > 87.3) the flushed terms are 0, and a sum of them
    takes the exact path (test_sums_of_flushed_terms_take_the_exact_path)."""
    x = reference.logit_grid(np.float32)
    ref = reference.binary_entropy(x)[0]
    got = _as_ynnpack_evaluates(_elementwise.binary_entropy_fusible, x)
    error = reference.eps_error(got, ref, dtype=np.float32)
    assert error[np.abs(x) < 87.3].max() <= 1.5
    assert np.all(got[np.abs(x) >= 87.3] <= ref[np.abs(x) >= 87.3])


@pytest.mark.parametrize(
    ("name", "loss", "logit", "label", "options"),
    [
        ("bce_with_logits", binary_cross_entropy_with_logits, 90.0, 1.0, {"pos_weight": 1e6}),
        ("binary_entropy", binary_entropy, -90.0, None, {}),
    ],
)
def test_sums_of_flushed_terms_take_the_exact_path(name, loss, logit, label, options):
    """Terms that are normal numbers but whose fusible form flushes to 0 (c * exp(-90) with c = 1e6 in the BCE,
    90 * sigmoid(-90) in the entropy): their sum is below n * 2**-64, so it is the exact path's (bitwise the sum
    of the elementwise losses), within 2 eps of 50-digit mpmath up to the subnormal parts of each term, where
    the fusible sum would be 0."""
    x = jnp.full(2 * _reductions.FUSIBLE_MIN_ELEMENTS, logit, jnp.float32)
    arrays = (x,) if label is None else (x, jnp.full_like(x, label))
    got = loss(*arrays, **options, reduction="sum")
    terms = loss(*arrays, **options, reduction="none")
    np.testing.assert_array_equal(got, jax.jit(lambda t: jnp.sum(_reductions.rounded(t)))(terms))
    ref = reference.value(name, logit, *arrays[1:2] and (label,), *options.values()) * x.size
    subnormal_parts = x.size * np.finfo(np.float32).tiny
    assert ref > 4 * subnormal_parts
    assert abs(float(got) - ref) <= 2 * EPS32 * ref + subnormal_parts


@pytest.mark.parametrize(
    ("term", "fusible_term", "masked_row", "fused"),
    [
        (1.0, 2.0, False, True),
        (1.0, 2.0, True, True),  # a row of masked terms only sums to 0 in both forms, and counts no kept term
        (2.0**-70, 2.0**-69, False, False),  # below n * 2**-64: flushed terms could matter
        (2.0**-62, 2.0**-61, True, True),
        (1.0, np.nan, False, False),
    ],
)
def test_which_sum_runs(term, fusible_term, masked_row, fused):
    """A loss whose exact and fusible terms differ by design (constants), summed per row (axis=-1): the result
    says which sum ran. The fused one runs unless its sum is NaN or below n * 2**-64 for n kept terms."""
    loss = _reductions.Terms(lambda x: jnp.full_like(x, term), lambda x: jnp.full_like(x, fusible_term))
    x = jnp.zeros((8, C), jnp.float32)
    where = jnp.ones(x.shape, bool).at[7].set(not masked_row)
    total = _pipeline.compute_loss(
        loss, [_arguments.Arg("logits", x, _arguments.Role.LOGITS)], weight=None, where=where, axis=-1, reduction="sum"
    )
    expected = np.full(8, C * (fusible_term if fused else term), np.float32)
    if masked_row:
        expected[7] = 0
    np.testing.assert_array_equal(total, expected)


def test_probabilities_with_float_labels_take_the_exact_path():
    """Float labels may be soft, so the BCE from probabilities sums its exact terms (bitwise the sum of the
    elementwise losses) whatever its size."""
    p = jnp.asarray(np.random.default_rng(8).uniform(size=N).astype(np.float32))
    y = (p > 0.3).astype(jnp.float32)
    terms = binary_cross_entropy(p, y, reduction="none")
    np.testing.assert_array_equal(
        binary_cross_entropy(p, y, reduction="sum"), jax.jit(lambda t: jnp.sum(_reductions.rounded(t)))(terms)
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [_reductions.FUSIBLE_MIN_ELEMENTS, 1 << 14, 1 << 18])
def test_fused_sum_against_float64(seed, n):
    """The fused sum and mean are within 2 eps of the float64 sum of the float64 terms (summation included;
    measured at most 0.9 eps)."""
    x, y = _inputs(seed, n)
    ref = bce_float64(np.asarray(x), np.asarray(y))[0].sum()
    total = float(binary_cross_entropy_with_logits(x, y, reduction="sum"))
    mean = float(binary_cross_entropy_with_logits(x, y))
    assert abs(total - ref) <= 2 * EPS32 * ref
    assert abs(mean - ref / n) <= 2 * EPS32 * ref / n


@pytest.mark.parametrize("loss", [binary_cross_entropy_with_logits, binary_cross_entropy, binary_entropy])
def test_value_and_grad_is_one_pass_for_the_value_and_one_for_the_gradient(loss):
    """The optimised HLO of the forward writes no array of N floats, and the loss is a YNNPACK fusion in
    value_and_grad too. For both BCEs value_and_grad writes exactly one array (the gradient); the entropy's
    gradient rule writes intermediates of its own."""
    x, y = _inputs(0, 1 << 16, labels=jnp.bool_)
    arrays = (x,) if loss is binary_entropy else (jax.nn.sigmoid(x) if loss is binary_cross_entropy else x, y)
    forward = _entry(jax.jit(loss).lower(*arrays).compile().as_text())
    both = _entry(jax.jit(jax.value_and_grad(loss)).lower(*arrays).compile().as_text())
    assert "ynn_fusion" in forward
    assert "ynn_fusion" in both
    assert _array_outputs(forward, x.size) == []
    if loss is not binary_entropy:
        assert len(_array_outputs(both, x.size)) == 1
    # With a mask, the fused terms are of the unmasked inputs, times the mask: still one pass.
    masked = _entry(jax.jit(functools.partial(loss, where=x > -1)).lower(*arrays).compile().as_text())
    assert _array_outputs(masked, x.size) == []


def test_small_sums_take_the_exact_path():
    """Below FUSIBLE_MIN_ELEMENTS elements the sum is the exact terms' (bitwise the elementwise losses' sum), and one
    term is within the contract's 1.5 eps of mpmath."""
    x, y = _inputs(1, _reductions.FUSIBLE_MIN_ELEMENTS - 1)
    total = binary_cross_entropy_with_logits(x, y, reduction="sum")
    terms = binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_array_equal(total, jax.jit(lambda t: jnp.sum(_reductions.rounded(t)))(terms))
    grid = reference.logit_grid(np.float32)
    for label in (0.0, 1.0):
        ref = reference.bce_with_logits(grid, np.full_like(grid, label))[0]
        got = np.array([binary_cross_entropy_with_logits(v, np.float32(label)) for v in grid[::97]])
        assert reference.eps_error(got, ref[::97], dtype=np.float32).max() <= 1.5


C = _reductions.FUSIBLE_MIN_ELEMENTS
CASES = {
    "plain": {},
    "pos_weight": {"pos_weight": jnp.linspace(0.5, 3.0, C, dtype=jnp.float32)},
    "label_smoothing": {"label_smoothing": 0.1},
    "weight": {"weight": jnp.linspace(0.0, 2.0, C, dtype=jnp.float32)},
    "where": {"where": jnp.arange(C) % 3 != 0},
    "ignore_label": {"ignore_label": -1},
}


def _kept(y, options):
    keep = np.ones(y.shape, bool)
    if "where" in options:
        keep &= np.broadcast_to(np.asarray(options["where"]), y.shape)
    if "ignore_label" in options:
        keep &= np.asarray(y) != options["ignore_label"]
    return keep


def _reference_value(terms, y, options):
    """The reduction of the exact terms, in float64 (masked terms are already 0): the loss's outputs, one per row
    for ``axis=-1``."""
    axis = options.get("axis")
    total = terms.sum(axis=axis)
    keep = _kept(y, options)
    reduction = options["reduction"]
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / max(keep.any(axis=1).sum(), 1)
    if reduction == "weighted_mean" and "weight" in options:
        weight = np.broadcast_to(np.asarray(options["weight"], np.float64), terms.shape) * keep
        return total / weight.sum(axis=axis)
    return total / keep.sum(axis=axis)


def _reference_reduction(terms, y, options):
    """The same reduction in JAX (float32), differentiable, for the gradient."""
    axis = options.get("axis")
    keep = jnp.asarray(_kept(np.asarray(y), options))
    total = jnp.sum(terms, axis=axis)
    reduction = options["reduction"]
    if reduction == "sum":
        return jnp.sum(total)
    if reduction == "batchmean":
        return total / jnp.maximum(jnp.sum(jnp.any(keep, axis=1)), 1)
    if reduction == "weighted_mean" and "weight" in options:
        weight = jnp.broadcast_to(options["weight"], terms.shape) * keep
        return jnp.sum(total / jnp.sum(weight, axis=axis))
    return jnp.sum(total / jnp.sum(keep, axis=axis))


def _probability_inputs(seed, shape):
    """Probabilities (exact 0 and 1 among them) and int32 labels, so that the fusible terms apply."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=shape).astype(np.float32)
    p.flat[::97], p.flat[1::97] = 0.0, 1.0
    return jnp.asarray(p), jnp.asarray(rng.uniform(size=shape) > 0.5, jnp.int32)


FUSED_LOSSES = {
    "binary_cross_entropy_with_logits": (binary_cross_entropy_with_logits, _inputs),
    "binary_cross_entropy": (binary_cross_entropy, _probability_inputs),
    "binary_entropy": (lambda x, y, **options: binary_entropy(x, **options), _inputs),
}
REDUCTIONS = ("sum", "mean", "weighted_mean", "batchmean")
AGREEMENT_CASES = [
    *[("binary_cross_entropy_with_logits", case, r) for case in sorted(CASES) for r in REDUCTIONS],
    *[("binary_cross_entropy", "plain", r) for r in REDUCTIONS],
    ("binary_cross_entropy", "pos_weight", "mean"),
    ("binary_cross_entropy", "weight", "weighted_mean"),
    ("binary_cross_entropy", "where", "mean"),
    ("binary_cross_entropy", "ignore_label", "batchmean"),
    *[("binary_entropy", "plain", r) for r in ("sum", "mean", "batchmean")],
    ("binary_entropy", "where", "mean"),
]


@pytest.mark.parametrize(("name", "case", "reduction"), AGREEMENT_CASES)
def test_fused_and_exact_paths_agree(name, case, reduction):
    """Fused against exact (the elementwise losses, reduced in float64 for the value and in float32 for the
    gradient) for every option and reduction of the BCE with logits, and the BCE from probabilities (int labels)
    and the entropy, over all axes and over the last: values within 2 eps relative (each row of the last axis, a
    float32 sum of C terms, within sqrt(C) / 2 eps), gradients within 2 eps; for
    the plain mean also the jvp and the Hessian-vector product (within 4 eps)."""
    loss, inputs = FUSED_LOSSES[name]
    x, y = inputs(2, (8, C))
    kwargs = dict(CASES[case])
    if case == "ignore_label":
        y = jnp.where(jnp.arange(C) % 5 == 0, -1, y).astype(y.dtype)
    for axis in [None] if reduction == "batchmean" else [None, -1]:
        options = {**kwargs, "reduction": reduction, **({} if axis is None else {"axis": axis})}

        def fused(x, options=options):
            return jnp.sum(loss(x, y, **options))

        def exact(x, options=options):
            return _reference_reduction(loss(x, y, **{**kwargs, "reduction": "none"}), y, options)

        grad = jax.grad(fused)(x)
        terms = np.asarray(loss(x, y, **{**kwargs, "reduction": "none"}), np.float64)
        expected = _reference_value(terms, np.asarray(y), options)
        outputs = np.asarray(loss(x, y, **options), np.float64)
        # The total within 2 eps; a row of axis=-1 is a float32 sum of C terms, which XLA:CPU accumulates lane by
        # lane: within the typical rounding of such a sum, sqrt(C) / 2 eps.
        bound = 2 if axis is None else math.sqrt(C) / 2
        assert np.all(np.abs(outputs - expected) <= bound * EPS32 * np.abs(expected)), (axis, outputs, expected)
        np.testing.assert_allclose(grad, jax.grad(exact)(x), rtol=2 * EPS32, atol=1e-30)
    if case == "plain" and reduction == "mean":
        v = jnp.asarray(np.random.default_rng(10).normal(size=x.shape).astype(np.float32)) * 1e-3
        tangents = [jax.jvp(f, (x,), (v,))[1] for f in (fused, exact)]
        np.testing.assert_allclose(tangents[0], tangents[1], rtol=4 * EPS32)
        hvp = [jax.jvp(jax.grad(f), (x,), (v,))[1] for f in (fused, exact)]
        scale = float(jnp.max(jnp.abs(hvp[1])))
        np.testing.assert_allclose(hvp[0], hvp[1], rtol=4 * EPS32, atol=4 * EPS32 * scale)


@pytest.mark.parametrize(
    ("logit", "label", "weight"),
    [(np.inf, 1.0, 1.0), (-np.inf, 0.0, 1.0), (np.inf, 0.0, 1.0), (np.inf, 0.0, 0.0), (np.nan, 1.0, 1.0)],
)
def test_non_finite_inputs_take_the_exact_path(logit, label, weight):
    """An infinite logit against a zero coefficient (0 * inf in the fusible terms), an infinite loss of zero
    weight, and a NaN logit: the sum is the exact path's (0, 0, inf, 0, NaN for these elements), and the
    gradient is finite where the exact one is."""
    x, y = _inputs(3)
    x, y = x.at[7].set(logit), y.at[7].set(label)
    w = jnp.ones_like(x).at[7].set(weight)
    value, grad = jax.value_and_grad(lambda x: binary_cross_entropy_with_logits(x, y, weight=w, reduction="sum"))(x)
    terms = binary_cross_entropy_with_logits(x, y, weight=w, reduction="none")
    expected = jax.jit(lambda t: jnp.sum(_reductions.rounded(t)))(terms)
    np.testing.assert_array_equal(value, expected)
    exact_grad = jax.grad(lambda x: jnp.sum(binary_cross_entropy_with_logits(x, y, weight=w, reduction="none")))(x)
    np.testing.assert_array_equal(grad, exact_grad)


@pytest.mark.parametrize("name", sorted(FUSED_LOSSES))
@pytest.mark.parametrize("garbage", [np.nan, np.inf, -np.inf])
def test_masked_garbage_reaches_neither_value_nor_gradient(name, garbage):
    """Masked-out elements holding NaN or inf (padding garbage) in the first argument, the labels and the weight:
    the fused sum of the unmasked inputs is NaN there (or inf * 0), so the exact path gives the sum of the
    elementwise losses, bitwise, and the gradient is the exact one's: finite, and 0 where masked."""
    loss, inputs = FUSED_LOSSES[name]
    x, y = inputs(12, (8, C))
    where = jnp.arange(C) % 7 != 3
    x, y = jnp.where(where, x, garbage), jnp.where(where, y, garbage).astype(y.dtype)
    weight = {} if name == "binary_entropy" else {"weight": jnp.where(where, 1.0, garbage)}

    def total(x):
        return loss(x, y, where=where, reduction="sum", **weight)

    def terms(x):
        return loss(x, y, where=where, reduction="none", **weight)

    value, grad = jax.value_and_grad(total)(x)
    np.testing.assert_array_equal(value, jax.jit(lambda t: jnp.sum(_reductions.rounded(t)))(terms(x)))
    assert np.isfinite(value)
    np.testing.assert_array_equal(grad, jax.grad(lambda x: jnp.sum(terms(x)))(x))
    assert np.all(np.asarray(grad)[:, ~np.asarray(where)] == 0)


def test_higher_derivatives_and_forward_mode_are_the_exact_cores():
    """jvp, the Hessian-vector product and a third derivative of the fused mean equal those of the mean of the
    elementwise losses (the exact core's rules)."""
    x, y = _inputs(4)
    v = jnp.asarray(np.random.default_rng(5).normal(size=x.shape).astype(np.float32))

    def fused(x):
        return binary_cross_entropy_with_logits(x, y, reduction="sum")

    def exact(x):
        return jnp.sum(binary_cross_entropy_with_logits(x, y, reduction="none"))

    for f in (fused, exact):
        assert jax.jvp(f, (x,), (v,))[1].shape == ()
    np.testing.assert_allclose(jax.jvp(fused, (x,), (v,))[1], jax.jvp(exact, (x,), (v,))[1], rtol=4 * EPS32)
    hvp = [jax.jvp(jax.grad(f), (x,), (v,))[1] for f in (fused, exact)]
    np.testing.assert_allclose(hvp[0], hvp[1], rtol=2 * EPS32)
    third = [jax.grad(lambda x, f=f: jax.jvp(jax.grad(f), (x,), (v,))[1] @ v)(x) for f in (fused, exact)]
    np.testing.assert_allclose(third[0], third[1], rtol=4 * EPS32, atol=1e-12)
    primal, tangent = jax.jvp(fused, (x,), (v,))
    assert jnp.isfinite(primal)
    assert jnp.isfinite(tangent)


def test_gradients_in_labels_pos_weight_and_weight_are_the_exact_cores():
    """The fused sum's derivatives in every array argument, first and second order, equal those of the sum of
    the elementwise losses."""
    x, y = _inputs(7)
    x, y = x.reshape(8, -1), y.reshape(8, -1)
    pw = jnp.linspace(0.5, 3.0, x.shape[1], dtype=jnp.float32)
    w = jnp.linspace(0.1, 2.0, x.shape[1], dtype=jnp.float32)

    def fused(x, y, pw, w):
        return binary_cross_entropy_with_logits(x, y, pos_weight=pw, weight=w, label_smoothing=0.1, reduction="sum")

    def exact(x, y, pw, w):
        terms = binary_cross_entropy_with_logits(x, y, pos_weight=pw, weight=w, label_smoothing=0.1, reduction="none")
        return jnp.sum(terms)

    first = [jax.grad(f, argnums=(0, 1, 2, 3))(x, y, pw, w) for f in (fused, exact)]
    for got, expected in zip(*first, strict=True):
        np.testing.assert_allclose(got, expected, rtol=4 * EPS32, atol=1e-6 * float(jnp.max(jnp.abs(expected))))
    second = [
        jax.grad(lambda y, pw, f=f: jnp.sum(jax.grad(f)(x, y, pw, w)), argnums=(0, 1))(y, pw) for f in (fused, exact)
    ]
    for got, expected in zip(*second, strict=True):
        np.testing.assert_allclose(got, expected, rtol=4 * EPS32, atol=1e-6 * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize(
    ("logits", "labels"), [(jnp.bfloat16, jnp.bool_), (jnp.float32, jnp.bool_), (jnp.float32, jnp.int32)]
)
def test_narrow_inputs_and_vmap(logits, labels):
    """bfloat16 logits and bool or int labels (cast inside the fused loop) give the float32 result of the same
    values, and vmap over a batch equals the per-row calls."""
    x, y = _inputs(6)
    x, y = x.astype(logits), y.astype(labels)
    same = binary_cross_entropy_with_logits(x.astype(jnp.float32), y.astype(jnp.float32), reduction="sum")
    got = binary_cross_entropy_with_logits(x, y, reduction="sum")
    np.testing.assert_allclose(np.float32(got), same, rtol=2**-8 if logits == jnp.bfloat16 else 0)
    rows = x.reshape(2, -1), y.reshape(2, -1)
    batched = jax.vmap(lambda a, b: binary_cross_entropy_with_logits(a, b, reduction="sum"))(*rows)
    single = [binary_cross_entropy_with_logits(a, b, reduction="sum") for a, b in zip(*rows, strict=True)]
    np.testing.assert_allclose(batched, jnp.stack(single), rtol=2 * EPS32)
