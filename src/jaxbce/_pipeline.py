"""Argument checking, masking, weighting and reduction: the one path every jaxbce loss takes.

A public loss names its arguments and their roles and hands an elementwise core to :func:`compute_loss`,
which

1. checks shapes, dtypes and options at trace time (``TypeError``/``ValueError`` naming the argument),
2. casts every array to the compute dtype (float32, or float64 for float64 inputs) inside the computation,
3. replaces masked-out elements by harmless values before the core sees them, so that NaN or inf padding
   reaches neither the value nor any gradient (the fused sums of :func:`_sum` take the unmasked inputs times
   the mask, and fall back to the exact path where padding makes them NaN),
4. when value checks are on (:func:`value_checks`, :func:`checked`), registers checkify checks on the values,
5. applies the core, the weights and the mask, and reduces over ``axis`` in the compute dtype.
"""

import contextlib
import contextvars
import dataclasses
import enum
import functools
import inspect
import math
import operator
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import export
from jax.custom_derivatives import SymbolicZero
from jax.experimental import checkify
from jax.sharding import AxisType

from jaxbce._double_word import rounded

T = typing.TypeVar("T")
REDUCTIONS = ("none", "sum", "mean", "weighted_mean", "batchmean")
FLOATING_DTYPES = tuple(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


class Role(enum.Enum):
    """What an array argument is; decides its checks and the value it takes where it is masked out."""

    LOGITS = "logits"  # real floating; any value
    PROBABILITIES = "probabilities"  # real floating; values in [0, 1]
    LABELS = "labels"  # floating, integer or bool; values in [0, 1]
    NON_NEGATIVE = "non-negative"  # real floating or integer, broadcast to the first argument's shape; >= 0
    FRACTION = "fraction"  # real floating or integer, broadcast to the first argument's shape; in [0, 1]


# Where an element is masked out the core sees these instead of the user's (possibly NaN) values.
_MASKED_VALUE = {
    Role.LOGITS: 0.0,
    Role.PROBABILITIES: 0.5,
    Role.LABELS: 0.0,
    Role.NON_NEGATIVE: 1.0,
    Role.FRACTION: 0.5,
}
_BROADCAST_ROLES = (Role.NON_NEGATIVE, Role.FRACTION)
_MASKED_WEIGHT = 0.0  # a masked weight is 0, so that it drops out of the "weighted_mean" denominator


@dataclasses.dataclass(frozen=True)
class Arg:
    """One array argument of a loss. The first of a call sets the shape; the others must match it exactly,
    except ``Role.NON_NEGATIVE`` and ``Role.FRACTION`` ones, which only have to broadcast to it."""

    name: str
    value: jax.typing.ArrayLike | None
    role: Role


def _describe_dtype(dtype) -> str:
    return np.dtype(dtype).name


def as_array(arg: Arg) -> jax.Array:
    try:
        return jnp.asarray(arg.value)
    except TypeError as error:
        raise TypeError(f"{arg.name} must be an array, got {type(arg.value).__name__}: {error}") from None


def _check_dtype(arg: Arg, array: jax.Array) -> None:
    dtype = np.dtype(array.dtype)
    if arg.role in (Role.LOGITS, Role.PROBABILITIES):
        ok, expected = (
            dtype in FLOATING_DTYPES,
            "a real floating dtype (float16, bfloat16, float32 or float64)",
        )
    elif arg.role is Role.LABELS:
        ok = jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_
        expected = "a floating, integer or bool dtype"
    else:
        ok = jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        expected = "a real floating or integer dtype"
    if not ok:
        raise TypeError(f"{arg.name} must have {expected}, got {_describe_dtype(dtype)}")


def as_checked_array(arg: Arg) -> jax.Array:
    """``arg``'s value as an array, with the dtype its role needs (else a ``TypeError`` naming it)."""
    array = as_array(arg)
    _check_dtype(arg, array)
    return array


def as_mask(where: jax.typing.ArrayLike, shape: tuple[int, ...], first_name: str) -> jax.Array:
    """``where`` as a bool array that broadcasts to ``shape`` (else a ``TypeError`` or ``ValueError``)."""
    keep = jnp.asarray(where)
    if keep.dtype != np.bool_:
        raise TypeError(f"where must be a bool array, got dtype {_describe_dtype(keep.dtype)}")
    check_broadcasts("where", keep.shape, shape, first_name)
    return keep


def explicit_spec(array: jax.Array) -> tuple | None:
    """The partition spec of ``array``'s type, one entry per dimension, where it is sharded over Explicit mesh
    axes (what ``jax.make_mesh`` creates by default); None under Auto axes, inside ``shard_map`` or with no mesh,
    where shardings are not part of the types."""
    sharding = getattr(jax.typeof(array), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or AxisType.Explicit not in mesh.axis_types:
        return None
    return (*sharding.spec, *[None] * (array.ndim - len(sharding.spec)))


def sharded_like(array: jax.Array, reference: jax.Array) -> jax.Array:
    """``array`` with the sharding of ``reference`` along the dimensions that broadcasting aligns (from the
    right), size-1 dimensions replicated: a no-op except under Explicit mesh axes.

    Why. A data pipeline hands labels, masks and weights over replicated or sharded over the examples only,
    while the logits are sharded over examples and classes. Under Explicit axes the sharding is part of an
    array's type, and a select (the cores choose between two forms by the sign of the logits, the pipeline
    masks with ``where``) needs all its operands sharded alike: so every argument is brought to the first
    argument's sharding once, here. From replicated or from a sharding over fewer axes this is a local slice,
    with no communication.
    """
    spec = explicit_spec(reference)
    if spec is None or array.ndim > reference.ndim:
        return array
    leading = reference.ndim - array.ndim
    aligned = zip(spec[leading:], reference.shape[leading:], array.shape, strict=True)
    target = tuple(axes if size == own else None for axes, size, own in aligned)
    if explicit_spec(array) == target:
        return array
    return jax.sharding.reshard(array, _on_mesh_of(reference, target))


def _on_mesh_of(array: jax.Array, spec: tuple) -> jax.sharding.NamedSharding:
    """``spec`` on the mesh of ``array``'s type: a sharding that needs no mesh context (``jax.set_mesh``), as
    arrays sharded before ``jit`` come without one."""
    return jax.sharding.NamedSharding(jax.typeof(array).sharding.mesh, jax.sharding.PartitionSpec(*spec))


def with_auto_axes(fn: Callable[..., T], *args, out_spec: tuple = ()) -> T:
    """``fn(*args)`` with the Explicit mesh axes of ``args`` made Auto for its duration; the result is sharded
    as ``out_spec`` says. A plain call where no argument is sharded over Explicit axes.

    Why. The fused losses visit the classes (or texts) in chunks: a loop that slices the class axis and
    carries gradients across steps. Sharding-in-types rejects a dynamic slice of a sharded dimension, while
    GSPMD, given the same arrays as Auto axes, partitions each chunk across the class shards without moving
    the kernel (the strided layout of ``_linear``). So under Explicit axes the loop runs as under Auto axes,
    with the inputs' shardings as its starting point.
    """
    explicit = [leaf for leaf in jax.tree.leaves(args) if explicit_spec(leaf) is not None]
    if not explicit:
        return fn(*args)
    return jax.sharding.auto_axes(fn, out_sharding=_on_mesh_of(explicit[0], out_spec))(*args)


def check_broadcasts(name: str, shape: tuple[int, ...], target: tuple[int, ...], first_name: str) -> None:
    try:
        broadcast = jnp.broadcast_shapes(shape, target)
    except ValueError:
        broadcast = None
    if broadcast != target:
        raise ValueError(
            f"{name} of shape {shape} does not broadcast to the shape {target} of {first_name} "
            "(NumPy broadcasting rules; it may have fewer dimensions or size-1 dimensions, never more)"
        )


def normalize_axis(axis, ndim: int) -> tuple[int, ...]:
    """``axis`` (None, an int or a tuple of ints) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple | list) else (axis,)
    normalized = []
    for a in axes:
        if isinstance(a, bool) or not hasattr(a, "__index__"):
            raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
        a = operator.index(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of bounds for an input of {ndim} dimensions")
        normalized.append(a % ndim)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"axis {axis!r} repeats an axis")
    return tuple(sorted(normalized))


def check_reduction(reduction, axis=None, *, valid: Sequence[str] = REDUCTIONS) -> None:
    if not isinstance(reduction, str) or reduction not in valid:
        names = ", ".join(repr(r) for r in valid)
        raise ValueError(f"reduction must be one of {names}; got {reduction!r}")
    if reduction in ("none", "batchmean") and axis is not None:
        raise ValueError(f"axis={axis!r} cannot be combined with reduction={reduction!r}; leave it as None")


def is_python_number(value) -> bool:
    """A Python int or float, not a bool: what a static numeric option is once :func:`jit_loss` has made NumPy
    scalars Python numbers; also how it tells a static value of an array option."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_ignore_label(ignore_label) -> float | None:
    """A static Python number (the -1 / 255 conventions) or None."""
    if ignore_label is None:
        return None
    if not is_python_number(ignore_label):
        raise TypeError(f"ignore_label must be None or a Python int or float, got {ignore_label!r}")
    if 0 <= ignore_label <= 1:
        raise ValueError(
            f"ignore_label={ignore_label!r} is a valid label value, so it would mask real labels; use a value "
            "outside [0, 1] (-1 or 255 by convention), or where= to mask elements"
        )
    return ignore_label


def check_real(name: str, value) -> float:
    """A static finite Python number (poly_epsilon)."""
    if not is_python_number(value) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite Python float, got {value!r}")
    return float(value)


def check_fraction(name: str, value, *, allow_none: bool = False) -> float | None:
    """A static Python number in [0, 1] (label_smoothing, alpha)."""
    if value is None and allow_none:
        return None
    if not is_python_number(value):
        raise TypeError(f"{name} must be a Python float in [0, 1], got {value!r}")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def compute_dtype(dtype) -> np.dtype:
    """float32 for 16- and 32-bit inputs, float64 for float64 inputs."""
    return np.dtype(jnp.promote_types(dtype, jnp.float32))


# Value checks are opt-in at trace time: a registered ``checkify.debug_check`` changes nothing in the compiled
# program, but it gives the jitted function a side effect, and JAX dispatches functions with effects on a
# slow path (about 80 us a call on a 2-core CPU, measured: more than the whole loss below 10^5 elements).
_VALUE_CHECKS = contextvars.ContextVar("jaxbce_value_checks", default=False)


def value_checks_enabled() -> bool:
    return _VALUE_CHECKS.get()


@contextlib.contextmanager
def value_checks(enabled: bool = True) -> Iterator[None]:
    """Context in which jaxbce losses that are traced register their checkify value checks.

    The checks (labels and probabilities outside [0, 1], negative ``weight`` or ``pos_weight``, NaN where
    ``where`` keeps the element) only report under ``jax.experimental.checkify``, and only in losses traced
    inside this context: what counts is when a function is traced, not when it runs. :func:`checked` does
    both for you; in your own jitted step::

        with jaxbce.value_checks():
            step = jax.jit(checkify.checkify(train_step))
            error, out = step(params, batch)  # traced here, with the checks
        error.throw()

    Outside the context no check is registered, and the compiled program and its dispatch cost are those of
    the loss alone.
    """
    token = _VALUE_CHECKS.set(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def register_value_checks(name: str, role: Role, array: jax.Array, keep: jax.Array | None) -> None:
    """Checks on values, registered inside :func:`value_checks`; they report under checkify."""
    if not value_checks_enabled() or array.size == 0 or (role is Role.LABELS and array.dtype == np.bool_):
        return
    checks = [(~jnp.isnan(array), "must not be NaN")] if jnp.issubdtype(array.dtype, jnp.floating) else []
    if role in (Role.LABELS, Role.PROBABILITIES, Role.FRACTION):
        checks.append((jnp.isnan(array) | ((array >= 0) & (array <= 1)), "must be in [0, 1]"))
    elif role is Role.NON_NEGATIVE:
        checks.append((jnp.isnan(array) | (array >= 0), "must be non-negative"))
    # The mask excuses elements of arrays that have the full shape; a smaller array (a per-class pos_weight)
    # is a parameter, checked whole.
    if keep is not None and jnp.broadcast_shapes(keep.shape, array.shape) != array.shape:
        keep = None
    for ok, requirement in checks:
        check_values(name, array, ok if keep is None else ok | ~keep, requirement)


def check_values(name: str, array: jax.Array, ok: jax.Array, requirement: str) -> None:
    """A checkify check that ``ok`` holds everywhere, reporting the first offending value of ``array`` and its
    index: ``f"{name} {requirement}; got {value} at index {index}"``."""
    value, index = _first_offender(array, ok)
    checkify.debug_check(jnp.all(ok), f"{name} {requirement}; got {{}} at index {{}}", value, index)


def _first_offender(array: jax.Array, ok: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The value and the index of the first element (row-major) where ``ok`` is False.

    Reductions over a broadcast linear index, with no reshape or dynamic indexing, so that it traces for arrays
    sharded over any mesh (explicit sharding rejects a dynamic slice of a sharded dimension).
    """
    ok = jnp.broadcast_to(ok, array.shape)
    strides = [math.prod(array.shape[d + 1 :]) for d in range(array.ndim)]
    linear = sum(
        (jax.lax.broadcasted_iota(jnp.int32, array.shape, d) * int(s) for d, s in enumerate(strides)),
        start=jnp.zeros(array.shape, jnp.int32),
    )
    first = jnp.min(jnp.where(ok, array.size, linear))
    value = jnp.sum(jnp.where(linear == first, array, jnp.zeros((), array.dtype)))
    index = jnp.stack(jnp.unravel_index(first, array.shape)) if array.ndim else first
    return value, index


class Terms(NamedTuple):
    """A loss's elementwise core and, optionally, the same values in operations that XLA:CPU fuses into a sum
    (``fusible``: no derivative and no care for ``0 * inf``; :func:`_sum` says when it is used)."""

    exact: Callable[..., jax.Array]
    fusible: Callable[..., jax.Array] | None = None


def compute_loss(
    elementwise: Callable[..., jax.Array] | Terms,
    args: Sequence[Arg],
    *,
    weight: jax.typing.ArrayLike | None,
    where: jax.typing.ArrayLike | None,
    axis,
    reduction: str,
    ignore_label: float | None = None,
) -> jax.Array:
    """Checks ``args``, applies ``elementwise`` to them (None stays None), then weight, mask and reduction.

    ``elementwise`` receives the arrays in the compute dtype, broadcast-compatible with the first, and
    returns the per-element loss in the compute dtype (a :class:`Terms` adds a fusible form for sums).
    Elements whose ``Role.LABELS`` argument equals ``ignore_label`` are masked as ``where=False`` masks them
    (and so exempt from the value checks).
    """
    first, *others = args
    first_array = as_checked_array(first)
    shape, out_dtype = first_array.shape, first_array.dtype
    dtype = compute_dtype(out_dtype)
    check_reduction(reduction, axis)
    if reduction == "batchmean" and not shape:
        raise ValueError(f"reduction='batchmean' needs a leading batch axis; {first.name} is a scalar")
    axes = normalize_axis(axis, len(shape))
    ignore_label = check_ignore_label(ignore_label)

    arrays = [first_array]
    for arg in others:
        if arg.value is None:
            arrays.append(None)
            continue
        array = as_checked_array(arg)
        if arg.role in _BROADCAST_ROLES:
            check_broadcasts(arg.name, array.shape, shape, first.name)
        elif array.shape != shape:
            raise ValueError(
                f"{arg.name} must have exactly the shape of {first.name}: got {arg.name} {array.shape} "
                f"and {first.name} {shape} (no broadcasting, so that a (4, 1) with a (4,) is an error, "
                "not a (4, 4) loss)"
            )
        arrays.append(array)

    weight_arg = Arg("weight", weight, Role.NON_NEGATIVE)
    weight_array = None
    if weight is not None:
        weight_array = as_checked_array(weight_arg)
        check_broadcasts("weight", weight_array.shape, shape, first.name)

    keep = None if where is None else as_mask(where, shape, first.name)
    arrays = [first_array, *(None if a is None else sharded_like(a, first_array) for a in arrays[1:])]
    weight_array = None if weight_array is None else sharded_like(weight_array, first_array)
    keep = None if keep is None else sharded_like(keep, first_array)
    if ignore_label is not None:
        labels = next(a for arg, a in zip(args, arrays, strict=True) if arg.role is Role.LABELS)
        labelled = labels != ignore_label
        keep = labelled if keep is None else keep & labelled

    checked_args = [*args, weight_arg]
    checked_arrays = [*arrays, weight_array]
    for arg, array in zip(checked_args, checked_arrays, strict=True):
        if array is not None:
            register_value_checks(arg.name, arg.role, array, keep)

    masked_values = [_MASKED_VALUE[arg.role] for arg in args]
    terms = elementwise if isinstance(elementwise, Terms) else Terms(elementwise)
    if reduction == "none":
        prepared, weight_array = _prepare(arrays, weight_array, keep, masked_values, dtype)
        return _masked_terms(terms.exact, dtype, prepared, weight_array, keep).astype(out_dtype)
    total = _sum(terms, dtype, arrays, weight_array, keep, masked_values, shape, axes)
    kept_weight = _prepare([], weight_array, keep, [], dtype)[1]
    return _normalize(total, shape, axes, reduction, keep, kept_weight).astype(out_dtype)


def _prepare(arrays, weight, keep, masked_values, dtype):
    """``arrays`` and ``weight`` with their masked-out elements replaced by harmless values (``masked_values``
    and 0), in ``dtype``; without a mask they keep their dtype: the sums cast them inside their loops."""
    if keep is None:
        return arrays, weight
    values = [*masked_values, _MASKED_WEIGHT]
    prepared = [
        None if array is None else jnp.where(keep, array.astype(dtype), jnp.asarray(value, dtype))
        for array, value in zip([*arrays, weight], values, strict=True)
    ]
    return prepared[:-1], prepared[-1]


def _masked_terms(core, dtype, arrays, weight, keep, *, fusible: bool = False) -> jax.Array:
    """``core`` of ``arrays`` cast to ``dtype``, times ``weight``, masked by ``keep``."""

    def cast(array):
        if array is None:
            return None
        if fusible and array.dtype == np.bool_:
            # bool -> float is a loop that YNNPACK cannot take (it writes 4 bytes per element); bool -> uint8
            # writes 1, and uint8 -> float is part of the fused sum.
            array = array.astype(np.uint8)
        return array.astype(dtype)

    arrays, weight = [cast(array) for array in arrays], cast(weight)
    removed = None if weight is None or fusible else weight == 0
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
        # The fusible terms leave 0 * inf = NaN to the exact fallback of _sum.
        loss = weight * (loss if fusible else jnp.where(removed & jnp.isinf(loss), 0, loss))
    if keep is not None:
        # The fusible terms are of the unmasked inputs: a masked element's finite loss * 0 is 0, and NaN or inf
        # garbage makes the sum NaN, which sends it to the exact path (whose inputs are _prepare'd).
        loss = loss * cast(keep) if fusible else jnp.where(keep, loss, 0)
    return loss


# XLA:CPU hands a reduction to YNNPACK from this many input elements on (jaxlib 0.10.2, measured); smaller sums
# stay in XLA's own loops, where the fusible terms gain nothing and the NaN check would be a fixed cost.
FUSIBLE_MIN_ELEMENTS = 4096


def _sum(terms: Terms, dtype, arrays, weight, keep, masked_values, shape, axes) -> jax.Array:
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
        arrays, weight = _prepare(arrays, weight, keep, masked_values, dtype)
        return jnp.sum(rounded(_masked_terms(terms.exact, dtype, arrays, weight, keep)), axis=axes)

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
        total = jnp.sum(_masked_terms(terms.fusible, dtype, *opaque, fusible=True), axis=axes)
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


def _normalize(total, shape, axes, reduction, keep, weight) -> jax.Array:
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        # Examples (along the leading axis) that keep at least one element.
        if keep is None:
            denominator = jnp.asarray(shape[0], total.dtype)
        else:
            kept = jnp.any(jnp.broadcast_to(keep, shape), axis=tuple(range(1, len(shape))))
            denominator = jnp.sum(kept, dtype=total.dtype)
    elif reduction == "weighted_mean" and weight is not None:
        denominator = jnp.sum(jnp.broadcast_to(weight, shape), axis=axes, dtype=total.dtype)
    else:
        denominator = _count(keep, shape, axes, total.dtype)
    # A mean over nothing (no kept element, or zero total weight) is 0 with zero gradient, not 0/0.
    return total / jnp.where(denominator == 0, 1, denominator)


def _count(keep, shape, axes, dtype) -> jax.Array:
    """The number of elements over ``axes`` that ``keep`` keeps (all of them for None), in ``dtype``."""
    if keep is None:
        return jnp.asarray(math.prod(shape[a] for a in axes), dtype)

    def count(keep):
        return jnp.sum(jnp.broadcast_to(keep, shape), axis=axes, dtype=dtype)

    def count_on_cpu(keep):
        # bool -> float is a loop of its own on XLA:CPU, which writes 4 bytes per element for YNNPACK to sum; a
        # uint8 copy behind a barrier writes 1, and YNNPACK converts it as it sums (0.12 against 2.3 ns per
        # element, measured).
        return count(jax.lax.optimization_barrier(keep.astype(np.uint8)))

    return jax.lax.platform_dependent(keep, cpu=count_on_cpu, default=count)


def jit_loss(loss: Callable[..., T]) -> Callable[..., T]:
    """``jax.jit`` of a public function, the one rule by which every jaxbce function is called and compiled.

    Before jit sees the call: too many positional arguments, a required array given as None, and a string or
    other non-array for an array are a ``TypeError`` naming the function and the argument; static options (the
    parameters whose annotation admits no array: ``axis``, ``reduction``, ``gamma``, ``chunk_size``, ...) take
    Python and NumPy scalars alike (NumPy ones become Python numbers), and a traced or array value for one is a
    ``TypeError`` saying that it must be a Python number. Whether value checks are on (:func:`value_checks`, read
    when the call is traced) is part of the cache key, so that :func:`checked` checks whatever was traced
    before.
    """
    name = loss.__name__
    parameters = inspect.signature(loss).parameters
    options = {
        option: p
        for option, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    arrays = {option: p for option, p in options.items() if jax.Array in typing.get_args(p.annotation)}
    static = tuple(option for option in options if option not in arrays)
    # An array option with a Python-number default (the focal loss's alpha) is static while it is given as a
    # Python number or None (checked at trace time, one compilation per value) and traced when it is an array.
    scalar_or_array = tuple(
        option
        for option, p in arrays.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and isinstance(p.default, int | float)
    )
    positional = [option for option, p in options.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keywords = [option for option, p in options.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def traced(*, checks_on, **kwargs):  # every argument by name, so that static ones may be given by position
        with value_checks(checks_on):
            return loss(**kwargs)

    @functools.cache
    def jitted(static_names: tuple[str, ...]):
        return jax.jit(traced, static_argnames=(*static_names, "checks_on"))

    @functools.wraps(loss)
    def call(*args, **kwargs):
        if len(args) > len(positional):
            hint = f"; the others are keyword-only: pass them by name, e.g. {keywords[0]}=..." if keywords else ""
            raise TypeError(
                f"{name}() takes {len(positional)} positional arguments ({', '.join(positional)}) but "
                f"{len(args)} were given{hint}"
            )
        for option, value in zip(positional, args, strict=False):
            if option in kwargs:
                raise TypeError(f"{name}() got multiple values for argument {option!r}")
            kwargs[option] = value
        unknown = set(kwargs) - set(options)
        if unknown:
            raise TypeError(f"{name}() got unexpected keyword arguments {sorted(unknown)}; it takes {list(options)}")
        for option, value in kwargs.items():
            if option in arrays:
                _check_array_argument(name, option, arrays[option], value)
            elif option in static or option in scalar_or_array:
                kwargs[option] = _static_option(name, option, value, array_allowed=option in scalar_or_array)
        scalars = tuple(
            option
            for option in scalar_or_array
            if option in kwargs and (kwargs[option] is None or is_python_number(kwargs[option]))
        )
        return jitted((*static, *scalars))(checks_on=value_checks_enabled(), **kwargs)

    return call


def _check_array_argument(function: str, option: str, parameter: inspect.Parameter, value) -> None:
    """A ``TypeError`` naming the function and the argument for None where an array is required, and for a value
    that is no array (a string, a dict, ...); NumPy and Python scalars and (nested) lists are arrays."""
    if value is None:
        if type(None) not in typing.get_args(parameter.annotation):
            raise TypeError(f"{function}(): {option} is required: an array, got None")
        return
    array_like = (jax.Array, np.ndarray, np.generic, int, float, complex, bool, list, tuple)
    convertible = hasattr(value, "__jax_array__") or hasattr(value, "__array__")  # pandas, torch CPU tensors
    if isinstance(value, str | bytes) or not (isinstance(value, array_like) or convertible):
        raise TypeError(f"{function}(): {option} must be an array, got {type(value).__name__}")


def _static_option(function: str, option: str, value, *, array_allowed: bool):
    """A static option's value with NumPy scalars as Python numbers; a ``TypeError`` for a traced or array value
    where only a number can be static."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, jax.Array | np.ndarray) and not array_allowed:
        kind = "a traced value" if isinstance(value, jax.core.Tracer) else f"an array of shape {np.shape(value)}"
        raise TypeError(
            f"{function}(): {option} is a static option and must be a Python number (or a NumPy scalar), got "
            f"{kind}; compilation specialises on its value, so pass it as a number, not as a jnp array or from "
            "inside a traced function"
        )
    return value


def checked(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` with jaxbce's value checks turned on: raises on the first bad value instead of returning NaN.

    Checks labels and probabilities outside [0, 1], negative ``weight`` or ``pos_weight``, and NaN in any of
    them or in the logits, where ``where`` keeps the element. ``checked`` traces ``fn`` inside
    :func:`value_checks` and under ``checkify`` and raises ``checkify.JaxRuntimeError`` naming the argument,
    the offending value and its index, e.g. ``labels must be in [0, 1]; got 2.0 at index [1 1]``.

    ``fn`` may be a jaxbce function or any function that calls one (a whole train step, jitted or not). Every
    jaxbce function keys its compilation on whether checks are on, so ``checked`` checks it even after it was
    called without. ``checked`` raises in Python, so it goes outside ``jax.jit``, ``vmap`` and the like, never
    inside (that is a ``TypeError`` saying so); to keep the checks inside your own jitted step, trace it with
    ``checkify`` inside :func:`value_checks`. Without ``checked`` or :func:`value_checks` no check is
    registered: the losses compile and dispatch as if the checks did not exist.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> loss = jaxbce.checked(jaxbce.binary_cross_entropy_with_logits)
      >>> loss(jnp.zeros(3), jnp.array([0.0, 1.0, 2.0]))
      Traceback (most recent call last):
      ...
      jax._src.checkify.JaxRuntimeError: labels must be in [0, 1]; got 2.0 at index [2]...
    """
    checkified = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with value_checks():
            error, out = checkified(*args, **kwargs)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(error)):
            raise TypeError(
                f"jaxbce.checked({getattr(fn, '__name__', fn)}) was called inside a JAX transformation (jax.jit, "
                "vmap, grad, ...), where it cannot raise. Put checked outside, jax.jit(fn) inside it: "
                "jaxbce.checked(jax.jit(fn)); or, to keep the checks in your jitted step, trace it with checkify "
                "inside jaxbce.value_checks():\n"
                "    with jaxbce.value_checks():\n"
                "        error, out = jax.jit(checkify.checkify(step))(*args)\n"
                "    error.throw()"
            )
        error.throw()
        return out

    return run
