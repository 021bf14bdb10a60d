"""The fused losses' arguments: checked once, then laid out by chunks of classes for the loops of ``_chunks``.

Shared by :func:`jaxbce.linear_binary_cross_entropy` (``_linear``) and
:func:`jaxbce.linear_binary_cross_entropy_update` (``_update``): the same arguments mean the same thing in both.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from jaxbce import _chunks
from jaxbce._arguments import (
    Arg,
    Role,
    as_mask,
    check_broadcasts,
    check_chunk_size,
    check_ignore_label,
    check_ignore_label_fits,
    check_reduction,
    check_shape,
    checked_array,
    compute_dtype,
    optional_array,
)
from jaxbce._jit import current_hint
from jaxbce._reductions import denominator
from jaxbce._sharding import devices_that_could_shard, shards_along
from jaxbce._value_checks import check_values, register_value_checks, value_checks_enabled

REDUCTIONS = ("none", "sum", "mean", "batchmean")
# The kernel's class axis in each layout: Flax, Haiku (D, C); Equinox, PyTorch (C, D).
KERNEL_CLASS_AXIS = {"in_out": -1, "out_in": -2}


def concrete_class_shards(arguments: dict) -> int | None:
    """``jit_loss``'s hint: the shards of the kernel's class axis where the kernel is passed from outside ``jit``
    (a concrete array, whose sharding ``jit`` will keep; under Auto axes its type does not tell), else None."""
    kernel = arguments.get("kernel")
    if kernel is None and isinstance(arguments.get("params"), dict):
        kernel = arguments["params"].get("kernel")
    if not isinstance(kernel, jax.Array) or isinstance(kernel, jax.core.Tracer) or kernel.ndim != 2:
        return None
    axis = KERNEL_CLASS_AXIS.get(arguments.get("kernel_layout", "in_out"), -1)
    return kernel.shape[axis] // kernel.sharding.shard_shape(kernel.shape)[axis]


class Options(NamedTuple):
    """The static options of one call."""

    reduction: str
    core: Callable  # the elementwise core (_cores)
    ignore_label: float | None
    chunk_size: int | None
    precision: Any
    kernel_axis: int  # the kernel's class axis (KERNEL_CLASS_AXIS)
    groups: int  # the layout's groups of classes (_chunks.class_groups)
    dtype: np.dtype  # compute dtype
    out_dtype: np.dtype


class Arrays(NamedTuple):
    """The checked array arguments; exactly one of ``labels``, ``positives`` and ``entries`` is set."""

    features: jax.Array  # (..., D)
    kernel: jax.Array  # (D, C) or (C, D)
    labels: jax.Array | None  # dense (..., C)
    positives: jax.Array | None  # (..., P)
    entries: _chunks.SparseLabels | None  # a BCOO's entries, rows flattened over the batch
    bias: jax.Array | None  # (C,)
    per_class: jax.Array | None  # the core's third array (pos_weight, or alpha): broadcasts to (C,)
    weight: jax.Array | None  # broadcasts to (..., C)
    keep: jax.Array | None  # (...) bool: the examples kept


def _check_weight(weight: jax.Array, batch: tuple[int, ...], classes: int) -> None:
    """weight broadcasts against the logits ``batch + (C,)``; one of shape ``batch`` is a per-example weight that
    lacks its class axis (unless its last size is C: per class), which is the mistake this names."""
    if weight.ndim and weight.shape == batch and batch[-1] != classes:
        raise ValueError(
            f"weight of shape {weight.shape} is per example: pass weight[..., None] (shape {(*batch, 1)}); weight "
            f"broadcasts against the logits' shape {(*batch, classes)} as in binary_cross_entropy_with_logits, so "
            "(C,) is per class"
        )
    check_broadcasts("weight", weight.shape, (*batch, classes), "the logits features.shape[:-1] + (C,)")


def _sparse_entries(function: str, labels: sparse.BCOO, logits_shape: tuple[int, ...]) -> _chunks.SparseLabels:
    """The entries of a BCOO of labels ``features.shape[:-1] + (C,)``, with their row index flattened over the
    batch; an entry out of range gets the row ``rows`` (dropped)."""
    if labels.n_batch or labels.n_dense or tuple(labels.shape) != logits_shape:
        raise ValueError(
            f"{function}: labels as a BCOO must have shape features.shape[:-1] + (C,) = {logits_shape}, with no batch "
            "or dense dimensions (jax.experimental.sparse.BCOO.fromdense or BCOO.from_scipy_sparse), got shape "
            f"{tuple(labels.shape)} with n_batch={labels.n_batch}, n_dense={labels.n_dense}"
        )
    values = checked_array("labels", labels.data, Role.LABELS)
    indices = labels.indices
    in_range = jnp.all((indices >= 0) & (indices < jnp.asarray(logits_shape)), axis=-1)
    batch = logits_shape[:-1]
    rows = jnp.zeros(indices.shape[:1], indices.dtype)
    for axis, size in enumerate(batch):
        rows = rows * size + indices[:, axis]
    return _chunks.SparseLabels(jnp.where(in_range, rows, math.prod(batch)), indices[:, -1], values)


def _check_sparse_values(entries: _chunks.SparseLabels, keep: jax.Array | None, batch: tuple[int, ...]) -> None:
    """Under :func:`jaxbce.checked`: each label, its duplicates summed, in [0, 1] (masked examples exempt)."""
    order = jnp.lexsort((entries.classes, entries.rows))
    rows, classes, values = entries.rows[order], entries.classes[order], entries.values[order]
    first = jnp.concatenate([jnp.ones((1,), bool), (rows[1:] != rows[:-1]) | (classes[1:] != classes[:-1])])
    groups = jnp.cumsum(first) - 1
    sums = jax.ops.segment_sum(values, groups, num_segments=values.shape[0])[groups]
    ok = (sums >= 0) & (sums <= 1)
    rows_count = math.prod(batch)
    kept = rows >= rows_count  # out of range: dropped, not a label
    if keep is not None:
        kept = kept | ~jnp.append(keep.reshape(rows_count), True)[jnp.minimum(rows, rows_count)]
    check_values("labels", sums, ok | kept, "must sum to values in [0, 1] at each (example, class) of the BCOO")


class Head(NamedTuple):
    """The checked features, kernel and bias of a classifier head, and how its classes are laid out."""

    features: jax.Array  # (..., D)
    kernel: jax.Array  # (D, C) or (C, D)
    bias: jax.Array | None  # (C,)
    kernel_axis: int  # the kernel's class axis (KERNEL_CLASS_AXIS)
    groups: int  # the layout's groups of classes (_chunks.class_groups)


def checked_head(function: str, features, kernel, bias, chunk_size, kernel_layout) -> Head:
    """The checks of every function of ``features @ kernel + bias`` over chunks (the fused losses, their
    updates, :func:`jaxbce.linear_top_k`)."""
    check_chunk_size(chunk_size)
    if kernel_layout not in KERNEL_CLASS_AXIS:
        raise ValueError(
            f"{function}: kernel_layout must be 'in_out' (kernel (D, C): Flax, Haiku) or 'out_in' (kernel (C, D): "
            f"Equinox, PyTorch), got {kernel_layout!r}"
        )
    kernel_axis = KERNEL_CLASS_AXIS[kernel_layout]
    features = checked_array("features", features, Role.LOGITS)
    kernel = checked_array("kernel", kernel, Role.LOGITS)
    if features.ndim < 1:
        raise ValueError("features must have shape (..., D), got a scalar")
    if kernel_layout == "in_out":
        check_shape("kernel", kernel, (features.shape[-1], "C"), "(features.shape[-1], C)")
    else:
        check_shape("kernel", kernel, ("C", features.shape[-1]), "(C, features.shape[-1]) for kernel_layout='out_in'")
    classes = kernel.shape[kernel_axis]
    bias = optional_array("bias", bias, Role.LOGITS)
    check_shape("bias", bias, (classes,), "(C,)")
    shards = shards_along(kernel, kernel_axis)
    groups = _chunks.class_groups(
        function, classes, chunk_size, current_hint() if shards is None else shards, devices_that_could_shard()
    )
    return Head(features, kernel, bias, kernel_axis, groups)


def checked_arguments(
    function: str,
    features,
    kernel,
    *,
    labels,
    positives,
    bias,
    weight,
    core,
    per_class: Arg,
    where,
    ignore_label,
    reduction,
    chunk_size,
    precision,
    kernel_layout,
) -> tuple[Options, Arrays]:
    """The fused losses' arguments checked (and the value checks registered): the static options and the
    arrays."""
    ignore_label = check_ignore_label(ignore_label)
    check_reduction(reduction, valid=REDUCTIONS)
    head = checked_head(function, features, kernel, bias, chunk_size, kernel_layout)
    features, kernel, bias, kernel_axis, groups = head.features, head.kernel, head.bias, head.kernel_axis, head.groups
    batch, classes = features.shape[:-1], kernel.shape[kernel_axis]
    logits_shape = (*batch, classes)
    if (labels is None) == (positives is None):
        raise ValueError("pass exactly one of labels (dense (..., C) or a BCOO) and positives (sparse, (..., P))")
    entries = None
    if isinstance(labels, sparse.BCOO):
        if ignore_label is not None:
            raise ValueError("ignore_label applies to dense labels; a BCOO of labels lists the known ones")
        entries, labels = _sparse_entries(function, labels, logits_shape), None
    if positives is not None and ignore_label is not None:
        raise ValueError("ignore_label applies to dense labels; positives list the known positive classes")
    labels = optional_array("labels", labels, Role.LABELS)
    if ignore_label is not None and labels is not None:
        check_ignore_label_fits(function, ignore_label, labels)
    positives = optional_array("positives", positives, Role.INDICES)
    per_class_arg, per_class = per_class, optional_array(per_class.name, per_class.value, per_class.role)
    weight = optional_array("weight", weight, Role.NON_NEGATIVE)
    check_shape("labels", labels, logits_shape, "features.shape[:-1] + (C,)")
    check_shape("positives", positives, (*batch, "P"), "features.shape[:-1] + (P,)")
    if per_class is not None:
        check_broadcasts(per_class_arg.name, per_class.shape, (classes,), "the classes (C,)")
    if weight is not None:
        _check_weight(weight, batch, classes)
    keep = None if where is None else as_mask(where, batch, "features.shape[:-1]")
    out_dtype = jnp.result_type(features.dtype, kernel.dtype)

    if value_checks_enabled():
        example_keep = None if keep is None else keep[..., None]
        known = None if ignore_label is None else labels != ignore_label
        register_value_checks("features", Role.LOGITS, features, example_keep)
        register_value_checks("labels", Role.LABELS, labels, _chunks.both(example_keep, known))
        register_value_checks("weight", Role.NON_NEGATIVE, weight, example_keep)
        register_value_checks(per_class_arg.name, per_class_arg.role, per_class, None)
        if entries is not None:
            _check_sparse_values(entries, keep, batch)
        if positives is not None:
            ok = (positives >= -1) & (positives < classes)
            ok = ok if keep is None else ok | ~keep[..., None]
            check_values("positives", positives, ok, f"must be class indices in [-1, {classes}) (-1: padding)")

    options = Options(
        reduction, core, ignore_label, chunk_size, precision, kernel_axis, groups,
        compute_dtype(out_dtype), out_dtype,
    )  # fmt: skip
    return options, Arrays(features, kernel, labels, positives, entries, bias, per_class, weight, keep)


class ByChunks(NamedTuple):
    """The checked arguments laid out by chunks of classes for the loops of ``_chunks``."""

    config: _chunks.Config
    parameters: _chunks.Parameters
    targets: _chunks.Targets
    example_weight: jax.Array  # (rows,): the weight of each example, 0 where masked
    divisor: jax.Array | None  # what the scalar reductions divide by (None for "none")


def by_chunks(options: Options, arrays: Arrays) -> ByChunks:
    """``arrays`` laid out by chunks: features ``(rows, D)``, class-sized arrays with their class axis as
    ``(groups, group_size)`` (free reshapes, no copy), and the weights and divisor of the reduction."""
    features, kernel, labels, keep, weight = arrays.features, arrays.kernel, arrays.labels, arrays.keep, arrays.weight
    dtype = options.dtype
    batch, classes = features.shape[:-1], kernel.shape[options.kernel_axis]
    rows = math.prod(batch)
    layout = _chunks.choose_layout(classes, rows if isinstance(rows, int) else 1024, options.chunk_size, options.groups)
    flat_keep = None if keep is None else jnp.broadcast_to(keep, batch).reshape(rows)
    # weight broadcasts against the (..., C) logits: (..., 1) per example (a row scale), (C,) per class, and
    # anything else per element (laid out like dense labels).
    element_weight = None
    if weight is not None and weight.ndim and weight.shape[-1] != 1:
        if all(size == 1 for size in weight.shape[:-1]):
            element_weight = weight.reshape(classes)
        else:
            element_weight = jnp.broadcast_to(weight, (*batch, classes)).reshape(rows, classes)
            if flat_keep is not None:  # masked rows may hold NaN weights
                element_weight = jnp.where(flat_keep[:, None], element_weight, 0)
        weight = None
    elif weight is not None and weight.ndim:
        weight = weight[..., 0]
    flat_features = features.reshape(rows, features.shape[-1]).astype(dtype)
    if flat_keep is not None:
        flat_features = jnp.where(flat_keep[:, None], flat_features, 0)
    per_class = arrays.per_class
    parameters = _chunks.Parameters(
        features=flat_features,
        kernel=_chunks.by_chunk(kernel, layout, axis=options.kernel_axis),
        bias=None if arrays.bias is None else _chunks.by_chunk(arrays.bias.astype(dtype), layout),
        per_class=None
        if per_class is None
        else _chunks.by_chunk(jnp.broadcast_to(per_class.astype(dtype), (classes,)), layout, fill=1),
        weight=None if element_weight is None else _chunks.by_chunk(element_weight.astype(dtype), layout),
    )
    positives = arrays.positives
    targets = _chunks.Targets(
        labels=None if labels is None else _chunks.by_chunk(labels.reshape(rows, classes), layout),
        positives=None if positives is None else positives.reshape(rows, positives.shape[-1]),
        keep=flat_keep,
        entries=arrays.entries,
    )
    config = _chunks.Config(layout, options.core, options.ignore_label, options.precision, dtype, options.kernel_axis)

    example_weight = jnp.ones((), dtype) if weight is None else weight.astype(dtype)
    if keep is not None:
        example_weight = jnp.where(keep, example_weight, 0)
    example_weight = jnp.broadcast_to(example_weight, batch).reshape(rows)
    parameters = _chunks.vary_together(parameters, parameters, targets)
    divisor = None
    if options.reduction != "none":
        # The denominator of the materialised loss of the (..., C) logits: keep masks examples, known elements.
        known = None if options.ignore_label is None else labels != options.ignore_label
        element_keep = _chunks.both(None if keep is None else jnp.broadcast_to(keep, batch)[..., None], known)
        shape = (*batch, classes)
        divisor = denominator(options.reduction, shape, tuple(range(len(shape))), element_keep, None, dtype)
    return ByChunks(config, parameters, targets, example_weight, divisor)
