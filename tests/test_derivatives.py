"""Every derivative of every registered loss, orders 1 to 3 in each differentiable argument (the arrays and the
weight), over the whole range of logits, hard and soft labels and every sample value of the static options:
finite, and orders 1 and 2 within stated bounds of a 50-digit reference (``mpmath.diff`` of the formulas in
tests/reference.py, written independently of the package). One documented gap (``_known_gap``).

Driven by the loss table (``tests/loss_table.py``): a new loss is covered by its row and its reference.
"""

import functools
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from jax_compat import enable_x64
from jaxbce._arguments import Role
from loss_table import LOSSES

# 0, tiny, moderate, where exp(x) and exp(-x) under- or overflow in float32 (87-104) and float64 (708-745),
# and +-1e4; both signs.
_MAGNITUDES = (0.0, 1e-30, 1e-8, 0.5, 1.0, 5.0, 17.0, 37.0, 50.0, 87.0, 89.0, 104.0, 110.0, 708.0, 710.0, 745.0, 1e4)
LOGITS = tuple(sorted({sign * m for m in _MAGNITUDES for sign in (1.0, -1.0)}))
LABELS = (0.0, 1.0, 0.3)
PROBABILITIES = (0.0, 1e-30, 1e-7, 0.3, 0.5, 0.9, 1 - 2.0**-20, 1.0)
TARGET_LOGITS = (-100.0, -1.0, 0.0, 2.0, 50.0)
POS_WEIGHT, WEIGHT = 2.0, 1.5
ALPHAS = (0.25, 0.75)  # an array alpha (the focal loss); the static alpha=None is covered by test_losses
DTYPES = (np.float32, np.float64)

# Derivatives of orders 1 and 2 within these many eps of the reference, relative to max(|reference|, the size
# of the terms they are a difference of; see ``_term_size``): that is the scale of their rounding errors where
# the terms cancel. (Relative accuracy in the tails, for the
# value and the logits gradient, is tested against the contract's scales in test_losses and test_elementwise.)
# Only where the point is inside the domain of the formula's derivative (see ``_compared``).
BOUNDS = {1: 4.0, 2: 4.0}  # measured worst: 2.2 and 2.2 (sigmoid_focal_loss)


def _option_rows(loss):
    """Rows of static options that between them use every sample value: row i takes the i-th sample of each
    option (cycling through the shorter lists)."""
    if not loss.options:
        return [{}]
    rows = max(len(samples) for samples in loss.options.values())
    return [{name: samples[i % len(samples)] for name, samples in loss.options.items()} for i in range(rows)]


# Every option row in float32; the default row (the first) in float64 as well. Tracing a third derivative of the
# double-word cores takes up to 40 s a case, and float64 runs the same code on wider numbers.
CASES = [
    pytest.param(name, options, dtype, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in options.items())}-{dtype.__name__}")
    for name, loss in LOSSES.items()
    for row, options in enumerate(_option_rows(loss))
    for dtype in DTYPES
    if dtype == np.float32 or row == 0
]


def _values(role, position):
    if role is Role.PROBABILITIES:
        return PROBABILITIES
    if role is Role.LABELS:
        return LABELS
    if role is Role.NON_NEGATIVE:
        return (POS_WEIGHT,)
    if role is Role.FRACTION:
        return ALPHAS
    return LOGITS if position == 0 else TARGET_LOGITS


def _term_size(point, argnum):
    """weight * max(1, pos_weight) for derivatives in the logits (sigmoid(x) - y and its derivatives); times
    1 + |x| in the other arguments, whose derivatives carry the BCE's label derivative -x (and the KL's
    target derivative, x - t)."""
    size = WEIGHT * max(1.0, POS_WEIGHT)
    return size if argnum == 0 else size * (1 + abs(point[0]))


def _grid(loss, dtype):
    """One column per array argument (in the registry's order), then the weight: every combination."""
    columns = [_values(role, i) for i, (_, role) in enumerate(loss.arrays)]
    if loss.takes_weight:
        columns.append((WEIGHT,))
    points = np.array(list(itertools.product(*columns)), np.float64).astype(dtype)
    return [points[:, j] for j in range(points.shape[1])]


def _scalar_loss(loss, options):
    names = [name for name, _ in loss.arrays] + (["weight"] if loss.takes_weight else [])
    positional = loss.positional

    def value(*arrays):
        given = dict(zip(names, arrays, strict=True))
        args = [given.pop(name) for name in positional]
        return loss.function(*args, **given, **options, reduction="sum")

    return value


@functools.cache
def _exact(name, options, point, argnum, order):
    """The reference derivative as a float, with the weight applied (the loss is linear in it)."""
    loss, options = LOSSES[name], dict(options)
    arrays = list(point[: len(loss.arrays)])
    weight = point[-1] if loss.takes_weight else 1.0
    if argnum == len(loss.arrays):  # the weight: d/dw = loss, higher orders 0
        return float(reference.SCALAR[loss.reference](*arrays, **options)) if order == 1 else 0.0
    return weight * float(reference.derivative(loss.reference, arrays, argnum, order, options))


def _compared(loss, point, argnum, order):
    """Whether the package promises the mathematical derivative at ``point``.

    ``binary_cross_entropy``'s gradient in ``probs`` is PyTorch's ``(p - y) / max(p (1 - p), 1e-12)``, which is
    the derivative of the loss only where the floor and the clamps of the logs are inactive
    (``p (1 - p) > 1e-12``); its derivatives at p = 0 and 1 are checked for finiteness only.
    """
    if loss.arrays[0][1] is Role.PROBABILITIES:
        p = point[0]
        return p * (1 - p) > 1e-12
    return True


def _known_gap(loss, options, point, argnum, order, dtype):
    """The one documented gap: the focal loss's derivatives of orders 2 and 3 in the labels at a hard label,
    for gamma < 1, beyond |x| = 30 (float32) or 300 (float64). They grow like (1 - p_t)**(gamma - 1) as the
    logit saturates and their intermediate powers (1 - p_t)**(gamma - 3) overflow first, so they come out inf
    or NaN there. For gamma >= 1 they are finite everywhere (asserted), and every derivative in the logits is."""
    if loss.reference != "sigmoid_focal" or argnum != 1 or order < 2 or not 0 < options["gamma"] < 1:
        return False
    x, y = point[0], point[1]
    return y in (0.0, 1.0) and abs(x) > (30 if dtype == np.float32 else 300)


def exact_derivatives(name, options, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The grid of a case as float64 ``(P, arguments)`` and its reference derivatives ``(2, arguments, P)`` of
    orders 1 and 2 (NaN where not compared): what ``scripts/make_derivatives.py`` stores."""
    loss = LOSSES[name]
    points = np.stack(_grid(loss, dtype), axis=1).astype(np.float64)
    exact = np.full((2, points.shape[1], points.shape[0]), np.nan)
    for order, argnum, index in itertools.product((1, 2), range(points.shape[1]), range(points.shape[0])):
        point = points[index]
        if _compared(loss, point, argnum, order):
            exact[order - 1, argnum, index] = _exact(name, tuple(options.items()), tuple(point.tolist()), argnum, order)
    return points, exact


def _stored(case_id):
    stored = np.load(pathlib.Path(__file__).parent / "data" / "derivatives.npz")
    if f"{case_id}/exact" not in stored:
        pytest.fail(f"no reference derivatives for {case_id}: run python scripts/make_derivatives.py")
    return stored[f"{case_id}/points"], stored[f"{case_id}/exact"]


@functools.cache
def _derivatives(name, options, dtype):
    """jit(vmap) of the pure derivatives of orders 1, 2 and 3 in every array argument, traced once: each order is
    the gradient of the one before, which returns it as an auxiliary value (tracing the third order traces the
    first two)."""
    loss = LOSSES[name]
    value = _scalar_loss(loss, dict(options))
    n = len(loss.arrays) + loss.takes_weight

    def every(*arrays):
        derivatives = []
        for i in range(n):
            (d2, d1), d3 = jax.value_and_grad(
                lambda *a, i=i: jax.value_and_grad(jax.grad(value, argnums=i), argnums=i)(*a)[::-1],
                argnums=i,
                has_aux=True,
            )(*arrays)
            derivatives.append((d1, d2, d3))
        return tuple(zip(*derivatives, strict=True))  # (order 1s, order 2s, order 3s)

    return jax.jit(jax.vmap(every))


@pytest.mark.parametrize(("name", "options", "dtype"), CASES)
def test_derivatives(name, options, dtype, request):
    loss = LOSSES[name]
    points, exact = _stored(request.node.callspec.id)
    with enable_x64(dtype == np.float64):
        grid = _grid(loss, dtype)
        np.testing.assert_array_equal(np.stack(grid, axis=1).astype(np.float64), points)  # the stored grid
        failures = []
        worst = {1: 0.0, 2: 0.0}
        by_order = _derivatives(name, tuple(options.items()), dtype)(*(jnp.asarray(c) for c in grid))
        for order, got in enumerate(by_order, start=1):
            for argnum, values in enumerate(got):
                values = np.asarray(values, np.float64)
                for index, (point, value) in enumerate(zip(points, values, strict=True)):
                    where = f"order {order} in argument {argnum} at {point.tolist()}: {value}"
                    if _known_gap(loss, options, point, argnum, order, dtype):
                        continue
                    if not np.isfinite(value):
                        failures.append(f"not finite, {where}")
                        continue
                    if order == 3 or np.isnan(exact[order - 1, argnum, index]):
                        continue
                    reference_value = exact[order - 1, argnum, index]
                    scale = max(abs(reference_value), _term_size(point, argnum))
                    error = reference.eps_error(value, reference_value, scale, dtype=dtype).item()
                    worst[order] = max(worst[order], error)
                    if error > BOUNDS[order]:
                        failures.append(f"{error:.3g} eps from {reference_value:.8g}, {where}")
    assert not failures, f"{len(failures)} failures (worst eps {worst}):\n" + "\n".join(failures[:20])


def test_stored_derivatives_are_mpmath_s():
    """A fixed sample of the stored references (tests/data/derivatives.npz), 4 per case, recomputed with mpmath."""
    rng = np.random.default_rng(0)
    for case in CASES:
        name, options, _ = case.values
        points, exact = _stored(case.id)
        compared = np.argwhere(~np.isnan(exact))
        for order_index, argnum, index in compared[rng.choice(len(compared), size=4, replace=False)]:
            again = _exact(name, tuple(options.items()), tuple(points[index].tolist()), argnum, order_index + 1)
            np.testing.assert_allclose(exact[order_index, argnum, index], again, rtol=1e-15, err_msg=case.id)
