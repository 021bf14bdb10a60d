"""The one path every elementwise jaxbce loss takes, from its public arguments to its reduced value.

A public loss hands its arrays (named, with their roles), its shared arguments and its elementwise core to
:func:`compute_loss`, which

1. checks shapes, dtypes and options at trace time (``_arguments``: ``TypeError``/``ValueError`` naming the
   argument),
2. brings every array to the first one's sharding under Explicit mesh axes (``_sharding``),
3. when value checks are on, registers checkify checks on the values (``_value_checks``),
4. applies the core, the weights and the mask, and reduces over ``axis`` in the compute dtype
   (``_reductions``: float32, or float64 for float64 inputs).
"""

from collections.abc import Sequence

import jax

from jaxbce._arguments import (
    Arg,
    Role,
    as_checked_array,
    as_mask,
    check_broadcasts,
    check_ignore_label,
    check_ignore_label_fits,
    check_reduction,
    compute_dtype,
    normalize_axis,
)
from jaxbce._jit import current_function
from jaxbce._reductions import Terms, masked_terms, masked_weight, normalize, prepare, sum_terms
from jaxbce._sharding import sharded_like
from jaxbce._value_checks import register_value_checks

# Where an element is masked out the core sees these instead of the user's (possibly NaN) values.
_MASKED_VALUE = {
    Role.LOGITS: 0.0,
    Role.PROBABILITIES: 0.5,
    Role.LABELS: 0.0,
    Role.NON_NEGATIVE: 1.0,
    Role.FRACTION: 0.5,
}
_BROADCAST_ROLES = (Role.NON_NEGATIVE, Role.FRACTION)


def compute_loss(
    terms: Terms,
    args: Sequence[Arg],
    *,
    weight: jax.typing.ArrayLike | None = None,
    where: jax.typing.ArrayLike | None,
    axis,
    reduction: str,
    ignore_label: float | None = None,
) -> jax.Array:
    """Checks ``args``, applies ``terms`` to them (None stays None), then weight, mask and reduction.

    ``terms.exact`` receives the arrays in the compute dtype, broadcast-compatible with the first, and returns
    the per-element loss in the compute dtype (``terms.fusible``, where given, the same values for sums on CPU).
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
        check_ignore_label_fits(current_function(), ignore_label, labels)
        labelled = labels != ignore_label
        keep = labelled if keep is None else keep & labelled

    checked_args = [*args, weight_arg]
    checked_arrays = [*arrays, weight_array]
    for arg, array in zip(checked_args, checked_arrays, strict=True):
        if array is not None:
            register_value_checks(arg.name, arg.role, array, keep)

    masked_values = [_MASKED_VALUE[arg.role] for arg in args]
    if reduction == "none":
        prepared, weight_array = prepare(arrays, weight_array, keep, masked_values, dtype)
        return masked_terms(terms.exact, dtype, prepared, weight_array, keep).astype(out_dtype)
    total = sum_terms(terms, dtype, arrays, weight_array, keep, masked_values, shape, axes)
    kept_weight = masked_weight(weight_array, keep, dtype)
    return normalize(total, shape, axes, reduction, keep, kept_weight).astype(out_dtype)
