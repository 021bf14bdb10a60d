"""Argument checks at trace time: each rule once, a ``TypeError`` or ``ValueError`` that names the argument and
what was expected. Used by every public function before anything is computed."""

import dataclasses
import enum
import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("none", "sum", "mean", "weighted_mean", "batchmean")
FLOATING_DTYPES = tuple(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


class Role(enum.Enum):
    """What an array argument is; decides its checks and the value it takes where it is masked out."""

    LOGITS = "logits"  # real floating; any value
    PROBABILITIES = "probabilities"  # real floating; values in [0, 1]
    LABELS = "labels"  # floating, integer or bool; values in [0, 1]
    NON_NEGATIVE = "non-negative"  # real floating or integer, broadcast to the first argument's shape; >= 0
    FRACTION = "fraction"  # real floating or integer, broadcast to the first argument's shape; in [0, 1]
    INDICES = "indices"  # integer class indices (the fused loss's sparse positives)


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
    elif arg.role is Role.INDICES:
        ok, expected = jnp.issubdtype(dtype, jnp.integer), "an integer dtype"
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


def checked_array(name: str, value: jax.typing.ArrayLike, role: Role) -> jax.Array:
    """``value`` as an array with the dtype that ``role`` needs (else a ``TypeError`` naming ``name``)."""
    return as_checked_array(Arg(name, value, role))


def optional_array(name: str, value: jax.typing.ArrayLike | None, role: Role) -> jax.Array | None:
    """:func:`checked_array` of an optional argument: None stays None."""
    return None if value is None else checked_array(name, value, role)


def as_mask(where: jax.typing.ArrayLike, shape: tuple[int, ...], first_name: str) -> jax.Array:
    """``where`` as a bool array that broadcasts to ``shape`` (else a ``TypeError`` or ``ValueError``)."""
    keep = jnp.asarray(where)
    if keep.dtype != np.bool_:
        raise TypeError(f"where must be a bool array, got dtype {_describe_dtype(keep.dtype)}")
    check_broadcasts("where", keep.shape, shape, first_name)
    return keep


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


def check_ignore_label_fits(function: str, ignore_label: float, labels: jax.Array) -> None:
    """A ``ValueError`` naming both where the labels' dtype cannot hold ``ignore_label``: comparing would cast it
    (-1 becomes 255 for uint8 labels, which would then mask real 255 labels), or it could never be equal."""
    dtype = np.dtype(labels.dtype)
    if dtype == np.bool_:
        holds, what = False, "bool, which holds only 0 and 1"
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        holds = float(ignore_label).is_integer() and info.min <= ignore_label <= info.max
        what = f"{dtype.name}, which holds the integers {info.min} to {info.max}"
    else:
        return
    if not holds:
        raise ValueError(
            f"{function}: ignore_label={ignore_label!r} cannot be held by labels of dtype {what}: compared with them "
            "it would be cast (or never match) and mask the wrong labels or none. Pass the labels as a signed "
            "integer or floating array (labels.astype(jnp.int32)), or an ignore_label their dtype holds"
        )


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


def check_shape(name: str, array: jax.Array | None, expected: tuple, description: str) -> None:
    """A ``ValueError`` unless ``array`` (None: nothing to check) has exactly the shape ``expected``, in which a
    string stands for any size (``"P"``); ``description`` says what the shape is made of, e.g.
    ``"features.shape[:-1] + (C,)"``."""
    if array is None:
        return
    matches = len(array.shape) == len(expected) and all(
        isinstance(size, str) or size == own for size, own in zip(expected, array.shape, strict=False)
    )
    if not matches and not expected:
        raise ValueError(f"{name} must be a scalar, got shape {array.shape}")
    if not matches:
        raise ValueError(f"{name} must have shape {description} = {tuple(expected)}, got {array.shape}")


def check_chunk_size(chunk_size) -> None:
    """None or a static positive Python int (the fused losses' classes per chunk)."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive Python int, got {chunk_size!r}")
