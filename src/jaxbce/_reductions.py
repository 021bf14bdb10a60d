"""Weighting, masking and reduction of elementwise terms, and the fused CPU sums.

The mask is applied twice over: :func:`prepare` replaces masked-out inputs by harmless values before a core sees
them (so NaN or inf padding reaches neither the value nor any gradient), and :func:`masked_terms` zeroes their
terms; the fused sums (:func:`sum_terms`) take the unmasked inputs times the mask instead, and fall back to the
exact path where padding makes them NaN.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import export
from jax.custom_derivatives import SymbolicZero

from jaxbce._double_word import rounded
from jaxbce._numerics import weighted

_MASKED_WEIGHT = 0.0  # a masked weight is 0, so that it drops out of the "weighted_mean" denominator


class Terms(NamedTuple):
    """A loss's elementwise core and, optionally, the same values in operations that XLA:CPU fuses into a sum
    (``fusible``: no derivative and no care for ``0 * inf``; :func:`sum_terms` says when it is used)."""

    exact: Callable[..., jax.Array]
    fusible: Callable[..., jax.Array] | None = None


def prepare(arrays, weight, keep, masked_values, dtype):
    """``arrays`` and ``weight`` with their masked-out elements replaced by harmless values (``masked_values``
    and 0), in ``dtype``; without a mask they keep their dtype: the sums cast them inside their loops."""
    if keep is None:
        return arrays, weight
    prepared = [
        None if array is None else jnp.where(keep, array.astype(dtype), jnp.asarray(value, dtype))
        for array, value in zip(arrays, masked_values, strict=True)
    ]
    return prepared, masked_weight(weight, keep, dtype)


def masked_weight(weight, keep, dtype):
    """``weight`` with its masked-out elements 0 (in ``dtype``), so that they drop out of a sum of weights."""
    if keep is None or weight is None:
        return weight
    return jnp.where(keep, weight.astype(dtype), jnp.asarray(_MASKED_WEIGHT, dtype))


def masked_terms(core, dtype, arrays, weight, keep) -> jax.Array:
    """``core`` of ``arrays`` cast to ``dtype``, times ``weight``, masked by ``keep``: the exact terms, with
    derivatives."""
    arrays = [None if a is None else a.astype(dtype) for a in arrays]
    weight = None if weight is None else weight.astype(dtype)
    removed = None if weight is None else weight == 0
    if removed is not None:
        # A zero weight removes its element from every derivative of the other arguments, even where the loss's
        # derivative there is infinite (labels at logits near the largest float): the core's rule would make
        # 0 * inf = NaN of the zero cotangent or tangent, so the element's inputs and loss are taken through
        # a select with their stop_gradient, which drops it (reverse mode before the core, forward mode after).
        arrays = [None if a is None else jnp.where(removed, jax.lax.stop_gradient(a), a) for a in arrays]
    loss = core(*arrays)
    if removed is not None:
        loss = jnp.where(removed, jax.lax.stop_gradient(loss), loss)
    if weight is not None:
        # A zero weight removes its element's value even where the loss is infinite (0 * inf is taken as 0; the
        # weight's own derivative there is the loss, or 0 where it is infinite); a NaN loss still propagates.
        loss = weighted(weight, loss)
    return loss if keep is None else jnp.where(keep, loss, 0)


def fusible_masked_terms(core, dtype, arrays, weight, keep) -> jax.Array:
    """The same values as :func:`masked_terms` in the operations that XLA:CPU fuses into a sum: plain products,
    no derivative. ``0 * inf`` is left NaN, and so is a masked element's NaN or inf garbage (these terms are of
    the unmasked inputs): a NaN sum sends :func:`sum_terms` to the exact terms, whose inputs are prepared."""

    def cast(array):
        if array is None:
            return None
        if array.dtype == np.bool_:
            # bool -> float is a loop that YNNPACK cannot take (it writes 4 bytes per element); bool -> uint8
            # writes 1, and uint8 -> float is part of the fused sum.
            array = array.astype(np.uint8)
        return array.astype(dtype)

    loss = core(*[cast(array) for array in arrays])
    if weight is not None:
        loss = cast(weight) * loss
    return loss if keep is None else loss * cast(keep)


# XLA:CPU hands a reduction to YNNPACK from this many input elements on (XLA's threshold; another value only moves
# where the fusible terms are used, never a result); smaller sums stay in XLA's own loops, where the fusible
# terms gain nothing and the NaN check would be a fixed cost.
FUSIBLE_MIN_ELEMENTS = 4096


def sum_terms(terms: Terms, dtype, arrays, weight, keep, masked_values, shape, axes) -> jax.Array:
    """The sum over ``axes`` of the masked, weighted terms.

    Why two evaluations: XLA:CPU hands a sum to YNNPACK together with the chain of arithmetic that feeds it, but
    the exact cores use selects and ``reduce_precision``, which YNNPACK lacks; their terms are written to memory
    and read back (an opaque no-op rounding keeps that to one array rather than two). Where a loss has
    ``fusible`` terms, float32 sums of at least ``FUSIBLE_MIN_ELEMENTS`` elements on CPU are taken of those, in one
    pass over the inputs, and the exact path runs only when that sum is NaN (an inf times a zero coefficient,
    or a NaN input) or so small that subnormals flushed to 0 could matter. The derivative is always the exact
    core's (:func:`_fused_sum`); other backends fuse the exact terms into their reductions and use them.
    """

    def exact_sum(arrays, weight, keep):
        arrays, weight = prepare(arrays, weight, keep, masked_values, dtype)
        return jnp.sum(rounded(masked_terms(terms.exact, dtype, arrays, weight, keep)), axis=axes)

    size = math.prod(shape)
    # A symbolic size (jax.export) counts as large.
    small = not export.is_symbolic_dim(size) and size < FUSIBLE_MIN_ELEMENTS
    if terms.fusible is None or dtype != np.float32 or small:
        return exact_sum(arrays, weight, keep)

    def fused_sum(arrays, weight, keep):
        # The barrier keeps XLA from sharing subexpressions (casts, 1 - y, -x) with the gradient's loop:
        # shared, they are written to memory as operands of both (the fusible terms take their constants
        # opaque for the same reason).
        opaque = jax.lax.optimization_barrier((arrays, weight, keep))
        total = jnp.sum(fusible_masked_terms(terms.fusible, dtype, *opaque), axis=axes)
        # A fusible term may be 0 where its exact value is subnormal or a small multiple of one (XLA flushes
        # subnormal intermediates): below 2**-119 times its weight and pos_weight in every jaxbce loss. Those
        # change a sum of n kept terms of at least n * 2**-64 by less than 2**-55 of itself (times the largest
        # such coefficient); a smaller sum is taken exactly, and so is a NaN one. A sum of masked terms only is 0
        # in both forms.
        trusted = jnp.all(total >= _count(keep, shape, axes, dtype) * 2.0**-64)
        return jax.lax.cond(trusted, lambda *_: total, exact_sum, arrays, weight, keep)

    return _fused_sum(exact_sum, fused_sum, (arrays, weight, keep))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _fused_sum(exact_sum: Callable, fused_sum: Callable, operands: tuple) -> jax.Array:
    """``fused_sum(*operands)`` on CPU, ``exact_sum(*operands)`` elsewhere, with the derivatives of
    ``exact_sum`` on every backend and to every order."""
    return jax.lax.platform_dependent(*operands, cpu=fused_sum, default=exact_sum)


def _fused_sum_jvp(exact_sum, fused_sum, primals, tangents):
    (operands,), (operand_tangents,) = primals, tangents
    out = _fused_sum(exact_sum, fused_sum, operands)
    leaves, tree = jax.tree.flatten(operands)
    tangent_leaves = jax.tree.leaves(operand_tangents, is_leaf=lambda t: type(t) is SymbolicZero)
    # Only the operands with a tangent are perturbed: the core's rule skips a partial derivative whose tangent
    # is a symbolic zero (it may be infinite, and inf * 0 would be NaN), so those stay constants here.
    live = [i for i, t in enumerate(tangent_leaves) if type(t) is not SymbolicZero]
    if not live:
        return out, jnp.zeros_like(out)

    def exact_of_live(*values):
        perturbed = list(leaves)
        for i, value in zip(live, values, strict=True):
            perturbed[i] = value
        return exact_sum(*jax.tree.unflatten(tree, perturbed))

    _, tangent = jax.jvp(exact_of_live, [leaves[i] for i in live], [tangent_leaves[i] for i in live])
    return out, tangent


_fused_sum.defjvp(_fused_sum_jvp, symbolic_zeros=True)


def normalize(total, shape, axes, reduction, keep, weight) -> jax.Array:
    """``total`` (the sum over ``axes`` of terms of shape ``shape``) divided as ``reduction`` says. For
    ``"weighted_mean"`` the divisor is differentiated (in the weight) by :func:`_quotient`, and a zero total weight
    gives 0 with zero gradient in every argument, the weight included."""
    if reduction != "weighted_mean" or weight is None:
        return total / denominator(reduction, shape, axes, keep, weight, total.dtype)
    total_weight = jnp.sum(jnp.broadcast_to(weight, shape), axis=axes, dtype=total.dtype)  # masked weights are 0
    nothing = total_weight == 0
    return jnp.where(nothing, 0, _quotient(total, jnp.where(nothing, 1, total_weight)))


@jax.custom_jvp
def _quotient(a: jax.Array, b: jax.Array) -> jax.Array:
    """a / b, differentiated by the quotient rule as ``(da - (a / b) db) / b``.

    Why. JAX differentiates ``a / b`` in ``b`` as ``-a / b**2``, and ``b**2`` overflows (or underflows) where ``b``
    is beyond the square root of the largest (or smallest) float: a weighted mean's weight gradient, ``(loss_i -
    mean) / W``, came out as inf, or with wrong signs, for total weights W near 1e20 or 1e-20 in float32. The form
    here never squares ``b``; it is also its own derivative rule, so that every order is formed the same way.
    """
    return a / b


@_quotient.defjvp
def _quotient_jvp(primals, tangents):
    (a, b), (da, db) = primals, tangents
    out = _quotient(a, b)
    return out, _quotient(da - out * db, b)


def denominator(reduction, shape, axes, keep, weight, dtype) -> jax.Array:
    """What ``reduction`` divides a sum over ``axes`` by, for terms of shape ``shape`` masked by ``keep`` (None:
    all kept; it broadcasts to ``shape``): 1 for ``"sum"``, the kept elements for ``"mean"`` (and for
    ``"weighted_mean"`` without a weight; with one, :func:`normalize` divides by the kept weight itself), and for
    ``"batchmean"`` the examples along the leading axis that keep at least one element. Never 0: a mean over
    nothing is 0 with zero gradient."""
    if reduction == "sum":
        return jnp.ones((), dtype)
    if reduction == "batchmean":
        if keep is None:
            count = jnp.asarray(shape[0], dtype)
        else:
            keep = _aligned(keep, shape)
            kept = jnp.any(keep, axis=tuple(range(1, len(shape))))
            count = jnp.sum(kept, dtype=dtype) * (shape[0] if keep.shape[0] == 1 else 1)
    else:
        count = _count(keep, shape, axes, dtype)
    return jnp.where(count == 0, 1, count)


def _aligned(keep: jax.Array, shape) -> jax.Array:
    """``keep`` with as many dimensions as ``shape`` (leading ones added), so that its axes are ``shape``'s."""
    return keep.reshape((1,) * (len(shape) - keep.ndim) + keep.shape)


def _count(keep, shape, axes, dtype) -> jax.Array:
    """The number of elements over ``axes`` that ``keep`` keeps (all of them for None), in ``dtype``. A mask that
    is broadcast along an axis (a per-example ``(N, 1)`` mask of ``(N, C)`` terms) is summed over its own
    elements and multiplied by the axis's size, not broadcast first: the fused losses' C may be millions."""
    if keep is None:
        return jnp.asarray(math.prod(shape[a] for a in axes), dtype)
    keep = _aligned(keep, shape)
    repeats = math.prod(shape[a] for a in axes if keep.shape[a] == 1 and shape[a] != 1)
    out_shape = tuple(size for a, size in enumerate(shape) if a not in axes)

    def count(keep):
        return jnp.broadcast_to(jnp.sum(keep, axis=axes, dtype=dtype) * repeats, out_shape)

    def count_on_cpu(keep):
        # bool -> float is a loop of its own on XLA:CPU, which writes 4 bytes per element for YNNPACK to sum; a
        # uint8 copy behind a barrier writes 1, and YNNPACK converts it as it sums.
        return count(jax.lax.optimization_barrier(keep.astype(np.uint8)))

    return jax.lax.platform_dependent(keep, cpu=count_on_cpu, default=count)
