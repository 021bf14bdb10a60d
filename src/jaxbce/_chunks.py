"""The chunk loop shared by the fused losses: BCE of ``features @ kernel + bias`` over chunks of classes.

Why chunks. With C in the hundreds of thousands the logits ``features @ kernel + bias``, their labels and
their gradient are the largest arrays of a train step, larger than the model. Here the classes are visited in
chunks inside one ``lax.fori_loop``: a chunk's logits are formed by a matmul, fed to the loss's elementwise core
(``Config.core``, built by ``_cores``: the same function and ``custom_jvp`` rules as the elementwise loss, such as
:func:`jaxbce.binary_cross_entropy_with_logits`) and dropped, so no array of size rows x C is ever held.
:func:`row_losses` is the value-only loop (one matmul per chunk); :func:`row_losses_and_gradients` forms the
gradients of a row-weighted sum as it goes (three matmuls per chunk); :func:`row_losses_and_updates` applies an
optimizer's update to each chunk as it goes. ``_linear`` and ``_contrastive`` wrap them.

Why groups of classes. The kernel's class axis is viewed as ``groups x group_size`` (a free reshape; class
``c`` is position ``c % group_size`` of group ``c // group_size``), and step ``j`` takes the same ``width``
positions of every group, a chunk of ``groups * width`` classes. ``groups`` is the number of shards the class
axis may be split into: each shard then holds whole groups, every step slices the group axis that no device
splits, and GSPMD partitions each step without moving the kernel. On one device there is one group, and a step
reads a contiguous block of columns.

Why the last step overlaps instead of padding. ``group_size`` need not be a multiple of ``width`` (a prime C,
Amazon-670K's 670,091). Padding every class-sized array to a multiple would copy the kernel, its bias, its
optimizer state and its gradient. Instead the last step starts ``width`` positions before the group's end, so
that it repeats some positions of the step before it: those are masked out of its losses and gradients
(:meth:`Layout.fresh`), and :func:`put` leaves them as that step wrote them. Only a symbolic C (``jax.export``),
whose size is unknown when the loop is traced, is padded.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbce._numerics import weighted

# A chunk's float32 logits and their gradient are about this many elements each: 8 MiB, small next to a
# kernel worth chunking, and large enough that each matmul runs at full speed (2^21 / 1024 rows = 2048
# classes per chunk).
CHUNK_ELEMENTS = 2**21
# Below this many classes a matmul chunk is too thin to run at full speed.
MIN_CHUNK = 256


class Layout(NamedTuple):
    """How the loops visit the classes (module notes): ``steps`` steps of ``width`` positions in each of
    ``groups`` groups of ``group_size`` classes."""

    classes: Any  # C: an int, or a symbolic dimension under jax.export
    groups: int  # divides C
    width: int  # positions of each group per step: a chunk is groups * width classes
    steps: Any  # ceil(group_size / width)

    @property
    def chunk(self) -> int:
        return self.groups * self.width

    @property
    def padded(self) -> bool:
        """Whether the class-sized arrays are padded to ``steps * width`` (a symbolic C only)."""
        return not isinstance(self.classes, int)

    @property
    def group_size(self):
        return self.steps * self.width if self.padded else self.classes // self.groups

    @property
    def overlaps(self) -> bool:
        """Whether the last step repeats positions of the one before it."""
        return not self.padded and self.group_size % self.width != 0

    def start(self, j: jax.Array) -> jax.Array:
        """The first position of step ``j`` in each group."""
        first = j * self.width
        return jnp.minimum(first, self.group_size - self.width) if self.overlaps else first

    def fresh(self, j: jax.Array) -> jax.Array | None:
        """``(width,)`` bool: the positions of step ``j`` that hold real classes seen for the first time (the
        others are the overlap or the padding, masked out of the losses and gradients); None where all do."""
        if not (self.padded or self.overlaps):
            return None
        position = self.start(j) + jnp.arange(self.width)
        return position < self.classes if self.padded else position >= j * self.width


def choose_layout(classes, rows: int, chunk_size: int | None, groups: int) -> Layout:
    """Chunks of ``chunk_size`` classes (a checked positive multiple of ``groups``; at most C), or, for None,
    about ``CHUNK_ELEMENTS`` logits of ``rows`` rows each and at least ``MIN_CHUNK`` classes, as equal as the
    steps allow."""
    target = chunk_size or max(MIN_CHUNK, CHUNK_ELEMENTS // max(rows, 1))
    if not isinstance(classes, int):  # a symbolic C: one group, a static width, a symbolic number of steps
        return Layout(classes, 1, target, -(-classes // target))
    group_size = classes // groups
    width = min(max(target // groups, 1), group_size)
    if chunk_size is None:  # the same width with the fewest repeated positions in the last step
        width = -(-group_size // -(-group_size // width))
    return Layout(classes, groups, width, -(-group_size // width))


def groups_of(classes, shards: int | None, possible: int) -> int:
    """The ``groups`` of the layout: the class shards where they are known (``shards``), else the largest number
    of shards that the class axis could be split into (``gcd(C, possible)``, ``possible`` the devices that could
    hold them); one for a symbolic C."""
    if not isinstance(classes, int):
        return 1
    return shards if shards is not None else math.gcd(classes, possible)


def class_groups(function: str, classes, chunk_size: int | None, shards: int | None, possible: int) -> int:
    """:func:`groups_of`, for a chunk the caller chose: an explicit ``chunk_size`` that is not a multiple of the
    groups is a ``ValueError``: its steps could not take the same number of classes from every shard."""
    groups = groups_of(classes, shards, possible)
    if chunk_size is not None and chunk_size % groups:
        where = (
            f"the kernel's {classes} classes are sharded over {groups} devices"
            if shards is not None
            else f"the kernel's {classes} classes may be sharded over up to {groups} devices (the greatest common "
            f"divisor of C and the {possible} devices; under Auto axes inside jit the sharding is not known when "
            "the loop is traced, under Explicit axes it is read from the kernel's type)"
        )
        raise ValueError(
            f"{function}: chunk_size={chunk_size} cannot keep each shard's work local: {where}, and every chunk "
            f"takes the same number of classes from each. Pass a multiple of {groups} (such as "
            f"{groups * -(-chunk_size // groups)}), or None to choose one"
        )
    return groups


class Config(NamedTuple):
    """What the loop needs besides arrays: static and hashable."""

    layout: Layout
    core: Callable  # the elementwise core, core(logits, labels, per_class) (_cores)
    ignore_label: float | None
    precision: Any
    dtype: np.dtype  # compute dtype of logits, losses and gradients
    kernel_axis: int = -1  # the kernel's class axis: -1 for (D, C) ("in_out"), -2 for (C, D) ("out_in")


class Parameters(NamedTuple):
    """The differentiable arrays, classes laid out by :func:`by_chunk`."""

    features: jax.Array  # (N, D), masked rows zeroed
    kernel: jax.Array  # (D, groups, group_size), or (groups, group_size, D) with kernel_axis=-2
    bias: jax.Array | None  # (groups, group_size)
    per_class: jax.Array | None  # (groups, group_size): the core's third array (pos_weight, or alpha)
    weight: jax.Array | None = None  # per class (groups, group_size) or per element (N, groups, group_size)


class SparseLabels(NamedTuple):
    """The entries of a ``jax.experimental.sparse.BCOO`` of labels ``(N, C)``: ``labels[rows, classes] +=
    values``, entries out of range dropped."""

    rows: jax.Array  # (entries,) int
    classes: jax.Array  # (entries,) int
    values: jax.Array  # (entries,)


class Targets(NamedTuple):
    """The labels, one of: dense ``(N, groups, group_size)``, padded positives ``(N, P)`` or sparse entries; and
    the row and class masks."""

    labels: jax.Array | None
    positives: jax.Array | None
    keep: jax.Array | None  # (N,) bool
    classes_kept: jax.Array | None = None  # (groups, group_size) bool: the contrastive loss's padded columns
    entries: SparseLabels | None = None


def by_chunk(array: jax.Array, layout: Layout, axis: int = -1, fill=0) -> jax.Array:
    """``array`` with its class axis ``axis`` (negative) as ``(groups, group_size)``: a free reshape, padded with
    ``fill`` only for a symbolic C. One group is no reshape: XLA would give the size-1 axis a layout of its own
    and copy the array to carry it through the loop."""
    if layout.padded:
        padding = [(0, 0)] * array.ndim
        padding[axis] = (0, layout.group_size - layout.classes)
        array = jnp.pad(array, padding, constant_values=fill)
    if layout.groups == 1:
        return array
    at = axis % array.ndim
    return array.reshape(*array.shape[:at], layout.groups, layout.group_size, *array.shape[at + 1 :])


def from_chunks(array: jax.Array, layout: Layout, axis: int = -1) -> jax.Array:
    """The inverse of ``by_chunk``: back to the class axis ``axis``."""
    at = axis % array.ndim  # the position axis; the group axis, if any, is before it
    if layout.groups > 1:
        at -= 1
        array = array.reshape(*array.shape[:at], layout.groups * layout.group_size, *array.shape[at + 2 :])
    return jax.lax.slice_in_dim(array, 0, layout.classes, axis=at) if layout.padded else array


def take(array: jax.Array | None, j: jax.Array, layout: Layout, axis: int = -1) -> jax.Array | None:
    """Step ``j``'s positions of an array laid out by ``by_chunk`` (``axis`` its position axis; the group axis,
    where there are several groups, is before it)."""
    if array is None:
        return None
    return jax.lax.dynamic_slice_in_dim(array, layout.start(j), layout.width, axis=axis)


def put(array: jax.Array, chunk: jax.Array, j: jax.Array, layout: Layout, axis: int = -1) -> jax.Array:
    """``array`` with step ``j``'s positions replaced by ``chunk`` (in place inside the loop), except those that
    the step before wrote (the overlap of the last step), which keep their values. ``chunk`` has the shape that
    :func:`take` gives, or its group and position axes as one (the chunk's classes, as the loss forms them)."""
    shape = [*array.shape]
    shape[axis] = layout.width
    chunk = chunk.reshape(shape).astype(array.dtype)
    if layout.overlaps:
        mask = [1] * chunk.ndim
        mask[axis] = layout.width
        chunk = jnp.where(layout.fresh(j).reshape(mask), chunk, take(array, j, layout, axis))
    return jax.lax.dynamic_update_slice_in_dim(array, chunk, layout.start(j), axis=axis)


def _dot(config: Config, a: jax.Array, b: jax.Array, contract: tuple[tuple[int, ...], tuple[int, ...]]) -> jax.Array:
    dimensions = (contract, ((), ()))
    return jax.lax.dot_general(a, b, dimensions, precision=config.precision, preferred_element_type=config.dtype)


# Why the chunk's classes are one axis, (N, groups * width), between the matmuls, and why one group has no
# group axis at all. The loss and its gradient are elementwise and their layout is free; arrays with a size-1
# axis, (N, 1, width) on one device, get a layout of their own from XLA, which then copies chunk-sized arrays
# between the operations.
def _flat(array: jax.Array | None, layout: Layout) -> jax.Array | None:
    """``(..., groups, width)`` as ``(..., groups * width)`` (one group: as it is)."""
    if array is None or layout.groups == 1:
        return array
    return array.reshape(*array.shape[:-2], -1)


def _take_flat(array: jax.Array | None, j: jax.Array, layout: Layout) -> jax.Array | None:
    """Step ``j``'s positions of a class-last array, its classes on one axis."""
    return _flat(take(array, j, layout), layout)


def _grouped(array: jax.Array, layout: Layout) -> jax.Array:
    """``(..., groups * width)`` as ``(..., groups, width)`` (one group: as it is)."""
    return array if layout.groups == 1 else array.reshape(*array.shape[:-1], layout.groups, layout.width)


def _class_axes(config: Config, kernel: jax.Array) -> tuple[int, ...]:
    """The axes of a kernel chunk that hold its classes (group and position, or the position alone)."""
    count = kernel.ndim - 1
    return tuple(range(1, 1 + count)) if config.kernel_axis == -1 else tuple(range(count))


def chunk_logits(config: Config, features: jax.Array, kernel: jax.Array) -> jax.Array:
    """``(N, groups * width)`` logits of a kernel chunk (``(D, [groups,] width)`` or ``([groups,] width, D)``)."""
    feature_axis = 0 if config.kernel_axis == -1 else kernel.ndim - 1
    return _flat(_dot(config, features, kernel, ((1,), (feature_axis,))), config.layout)


def features_gradient(config: Config, d_logits: jax.Array, kernel: jax.Array) -> jax.Array:
    """``(N, D)``: ``d_logits @ kernel_chunk.T`` for ``d_logits`` ``(N, groups * width)``."""
    d_logits = _grouped(d_logits, config.layout)
    return _dot(config, d_logits, kernel, (tuple(range(1, d_logits.ndim)), _class_axes(config, kernel)))


def kernel_gradient(config: Config, features: jax.Array, d_logits: jax.Array) -> jax.Array:
    """``features.T @ d_logits`` in the kernel chunk's layout."""
    d_logits = _grouped(d_logits, config.layout)
    if config.kernel_axis == -1:
        return _dot(config, features, d_logits, ((0,), (0,)))
    return _dot(config, d_logits, features, ((0,), (0,)))


def _position_in_chunk(classes: jax.Array, j: jax.Array, layout: Layout) -> jax.Array:
    """Where each class index lands in step ``j``'s flattened chunk ``(groups * width,)``; ``chunk`` (out of
    bounds, dropped by the scatters) for a class outside the step, a negative index or one of at least C."""
    group, position = classes // layout.group_size, classes % layout.group_size
    offset = position - layout.start(j)
    inside = (classes >= 0) & (classes < layout.classes) & (offset >= 0) & (offset < layout.width)
    return jnp.where(inside, group * layout.width + offset, layout.chunk)


def _chunk_labels(targets: Targets, rows: int, j: jax.Array, config: Config) -> tuple[jax.Array, jax.Array | None]:
    """The labels of step ``j`` ``(N, groups * width)`` and, with ``ignore_label``, which of them are known (None:
    all)."""
    layout = config.layout
    if targets.labels is not None:
        labels = _take_flat(targets.labels, j, layout)
        known = None if config.ignore_label is None else labels != config.ignore_label
        keep = both(None if targets.keep is None else targets.keep[:, None], known)
        labels = labels.astype(config.dtype)
        # Masked rows may hold NaN labels (padding), ignored elements their ignore label; the core sees 0 there,
        # as in the elementwise losses.
        return (labels if keep is None else jnp.where(keep, labels, 0)), known
    zeros = jnp.zeros((layout.chunk,), config.dtype)
    if targets.positives is not None:
        # A scatter per row (batched over rows, so that a row-sharded batch partitions without gathering the
        # indices); a repeated class is set twice, counted once.
        index = _position_in_chunk(targets.positives, j, layout)
        labels = jax.vmap(lambda row: zeros.at[row].set(1, mode="drop"))(index)
    else:
        # One scatter of the entries that fall in this step; duplicates add up, as BCOO defines.
        entries = targets.entries
        row = jnp.where((entries.rows >= 0) & (entries.rows < rows), entries.rows, rows)
        index = _position_in_chunk(entries.classes, j, layout)
        values = entries.values.astype(config.dtype)
        labels = jnp.zeros((rows, layout.chunk), config.dtype).at[row, index].add(values, mode="drop")
        if targets.keep is not None:  # masked rows may hold NaN values
            labels = jnp.where(targets.keep[:, None], labels, 0)
    return labels, None


def both(a: jax.Array | None, b: jax.Array | None) -> jax.Array | None:
    """a & b, for masks of which None means all True."""
    return b if a is None else a if b is None else a & b


class _Chunk(NamedTuple):
    """Step ``j``'s inputs to the elementwise core, each ``(N, groups * width)`` or broadcasting to it."""

    logits: jax.Array
    labels: jax.Array
    per_class: jax.Array | None
    weight: jax.Array | None
    valid: jax.Array | None  # the elements that count (None: all): fresh classes, known labels, kept texts


def _chunk_inputs(parameters: Parameters, targets: Targets, j: jax.Array, config: Config) -> _Chunk:
    layout = config.layout
    logits = chunk_logits(config, parameters.features, take(parameters.kernel, j, layout, config.kernel_axis))
    if parameters.bias is not None:
        logits = logits + _take_flat(parameters.bias, j, layout).astype(config.dtype)
    per_class, weight = (_take_flat(a, j, layout) for a in (parameters.per_class, parameters.weight))
    per_class, weight = (None if a is None else a.astype(config.dtype) for a in (per_class, weight))
    labels, known = _chunk_labels(targets, parameters.features.shape[0], j, config)
    fresh = layout.fresh(j)
    fresh = None if fresh is None else jnp.tile(fresh, layout.groups)
    valid = both(both(fresh, known), _take_flat(targets.classes_kept, j, layout))
    return _Chunk(logits, labels, per_class, weight, valid)


def _elementwise_loss(config: Config, chunk: _Chunk) -> jax.Array:
    loss = config.core(chunk.logits, chunk.labels, chunk.per_class)
    if chunk.weight is not None:
        loss = weighted(chunk.weight, loss)  # a zero weight removes its element even where its loss is infinite
    return loss if chunk.valid is None else jnp.where(chunk.valid, loss, 0)


def _row_sums(loss: jax.Array) -> jax.Array:
    return loss.sum(axis=-1)


def zeros(shape, dtype, *inputs) -> jax.Array:
    """Zeros that vary over the ``shard_map`` axes that any of ``inputs`` varies over (``zeros_like`` keeps
    them; outside ``shard_map`` there are none): a loop carry must have the type of what the body makes of it."""
    zero = sum(jnp.zeros_like(leaf, dtype=dtype, shape=()) for leaf in jax.tree.leaves(inputs))
    return jnp.zeros(shape, dtype) + zero


def vary_together(tree, *inputs):
    """``tree`` with each leaf varying over every ``shard_map`` axis that ``inputs`` vary over. Inside
    ``shard_map`` with the classes local, the features are the same on every class shard while the kernel
    is not; adding zeros outside the ``custom_vjp`` lets JAX's autodiff sum the features' gradient over the
    class shards (the transpose of that implicit broadcast), as it would for the materialised logits.
    Everywhere else the zeros are constants that XLA removes."""
    return jax.tree.map(lambda leaf: leaf + zeros((), leaf.dtype, *inputs), tree)


def row_losses(config: Config, parameters: Parameters, targets: Targets) -> jax.Array:
    """Per-row sums over classes of the loss, one matmul per chunk."""

    def step(j, rows):
        return rows + _row_sums(_elementwise_loss(config, _chunk_inputs(parameters, targets, j, config)))

    initial = zeros(parameters.features.shape[:1], config.dtype, parameters, targets)
    return jax.lax.fori_loop(0, config.layout.steps, step, initial)


def _chunk_gradients(config: Config, parameters: Parameters, targets: Targets, row_scale: jax.Array, j: jax.Array):
    """Step ``j``'s gradients of ``sum(row_scale * row_losses)`` in its logits, per-class array and weight, and
    its row losses."""
    chunk = _chunk_inputs(parameters, targets, j, config)

    def scaled_sum(x, per_class, w):
        loss = _elementwise_loss(config, chunk._replace(logits=x, per_class=per_class, weight=w))
        return jnp.sum(row_scale[:, None] * loss), _row_sums(loss)

    total, pullback, chunk_rows = jax.vjp(scaled_sum, chunk.logits, chunk.per_class, chunk.weight, has_aux=True)
    return (*pullback(jnp.ones_like(total)), chunk_rows)


def row_losses_and_gradients(
    config: Config, parameters: Parameters, targets: Targets, row_scale: jax.Array, wanted: Parameters
) -> tuple[jax.Array, Parameters]:
    """Per-row losses and the gradients of ``sum(row_scale * row_losses)`` in the parameters that ``wanted``
    marks True (None for the others), chunk by chunk."""
    features, kernel, layout = parameters.features, parameters.kernel, config.layout

    def step(j, carry):
        rows, gradients = carry
        d_logits, d_per_class, d_weight, chunk_rows = _chunk_gradients(config, parameters, targets, row_scale, j)
        if gradients.features is not None:  # d_logits @ kernel_chunk.T, summed over chunks
            d_features = features_gradient(config, d_logits, take(kernel, j, layout, config.kernel_axis))
            gradients = gradients._replace(features=gradients.features + d_features)
        if gradients.kernel is not None:  # features.T @ d_logits, this chunk's columns
            d_kernel = kernel_gradient(config, features, d_logits)
            gradients = gradients._replace(kernel=put(gradients.kernel, d_kernel, j, layout, config.kernel_axis))
        if gradients.bias is not None:
            gradients = gradients._replace(bias=put(gradients.bias, d_logits.sum(axis=0), j, layout))
        if gradients.per_class is not None:
            gradients = gradients._replace(per_class=put(gradients.per_class, d_per_class, j, layout))
        if gradients.weight is not None:
            gradients = gradients._replace(weight=put(gradients.weight, d_weight, j, layout))
        return rows + chunk_rows, gradients

    def zeros_like(name: str, array: jax.Array | None):
        if array is None or not getattr(wanted, name):
            return None
        return zeros(array.shape, config.dtype if name == "features" else array.dtype, parameters, targets, row_scale)

    initial = (
        zeros(features.shape[:1], config.dtype, parameters, targets, row_scale),
        Parameters(*(zeros_like(name, a) for name, a in zip(Parameters._fields, parameters, strict=True))),
    )
    return jax.lax.fori_loop(0, config.layout.steps, step, initial)


class Head(NamedTuple):
    """What the update loop carries: the layer's kernel and bias (or None) laid out by ``by_chunk``, and the
    caller's ``rest`` (the optimizer state's leaves, each laid out by chunks along ``axes[i]`` or, for None,
    whole)."""

    kernel: jax.Array
    bias: jax.Array | None
    rest: list


def _read(head: Head, axes: list[int | None], j: jax.Array, config: Config) -> Head:
    layout = config.layout
    rest = [leaf if axis is None else take(leaf, j, layout, axis) for leaf, axis in zip(head.rest, axes, strict=True)]
    return Head(take(head.kernel, j, layout, config.kernel_axis), take(head.bias, j, layout), rest)


def _write(head: Head, values: Head, axes: list[int | None], j: jax.Array, config: Config) -> Head:
    layout = config.layout
    rest = [
        value if axis is None else put(leaf, value, j, layout, axis)
        for leaf, value, axis in zip(head.rest, values.rest, axes, strict=True)
    ]
    bias = None if head.bias is None else put(head.bias, values.bias, j, layout)
    return Head(put(head.kernel, values.kernel, j, layout, config.kernel_axis), bias, rest)


def _as_bits(tree):
    """``tree`` with its bfloat16 arrays as ``uint16`` arrays of their bits."""

    def as_bits(array):
        return jax.lax.bitcast_convert_type(array, jnp.uint16) if array.dtype == jnp.bfloat16 else array

    return jax.tree.map(as_bits, tree)


def _from_bits(array: jax.Array, dtype) -> jax.Array:
    return array if array.dtype == dtype else jax.lax.bitcast_convert_type(array, dtype)


def row_losses_and_updates(
    config: Config,
    parameters: Parameters,
    targets: Targets,
    row_scale: jax.Array,
    head: Head,
    axes: list[int | None],
    update: Callable,
) -> tuple[jax.Array, jax.Array, Head]:
    """Per-row losses, the features gradient of ``sum(row_scale * row_losses)``, and ``head`` with each chunk
    ``j`` replaced by ``update(j, kernel_gradient, bias_gradient, old)``: ``old`` is chunk ``j`` of ``head``
    (the kernel's, the bias's and the chunked state's chunks; the other leaves whole) and the gradients are
    chunk ``j``'s. ``parameters.kernel`` and ``.bias`` are not read: the kernel and bias are ``head``'s. The
    positions of the last step that the step before updated keep their values (:func:`put`).

    Why each chunk is written one step late. With ``head`` donated, the loop updates the kernel and the state in
    place, and no kernel-sized gradient or update ever exists. But an optimizer's update reads several state
    arrays at once (Adam's new kernel reads both moments), and XLA fuses those reads of the old buffers into the
    fusions that write the other buffers in place; to keep every read ahead of every write it then copies each
    state array, a kernel-sized copy per step. So chunk ``j``'s new values are carried to the next step and
    written there first, and chunk ``j + 1`` is read from the buffers written: every read comes after the write,
    from data dependencies alone (the overlapping last step reads its predecessor's new values).

    Why bfloat16 arrays are carried as the integers of their bits on the CPU. XLA:CPU has no bfloat16
    dynamic-update-slice: it converts the whole array to float32, writes the chunk and converts it back, a pass
    over the kernel at every chunk (quadratic in C). A ``uint16`` array is written in place; the cost is a copy
    of the bits of most bfloat16 arrays before the loop and back after it. float16 arrays, and bfloat16 ones on
    GPUs and TPUs, are written in place as they are (``platform_dependent``).
    """
    features, layout = parameters.features, config.layout
    dtypes = jax.tree.map(lambda array: array.dtype, head)

    def loop(as_bits: bool) -> tuple[jax.Array, jax.Array, Head]:
        stored_form = _as_bits if as_bits else lambda tree: tree
        as_floats = lambda stored: jax.tree.map(_from_bits, stored, dtypes)  # noqa: E731

        def step(j, carry):
            rows, d_features, stored, pending = carry
            # Chunk j - 1's new values (at j = 0, chunk 0 as it was).
            stored = _write(stored, stored_form(pending), axes, jnp.maximum(j - 1, 0), config)
            head = as_floats(stored)
            old = _read(head, axes, j, config)
            current = parameters._replace(kernel=head.kernel, bias=head.bias)
            d_logits, _, _, chunk_rows = _chunk_gradients(config, current, targets, row_scale, j)
            d_features = d_features + features_gradient(config, d_logits, old.kernel)
            bias_gradient = _grouped(d_logits.sum(axis=0), layout)
            new = update(j, kernel_gradient(config, features, d_logits), bias_gradient, old)
            return rows + chunk_rows, d_features, stored, new

        initial = (
            zeros(features.shape[:1], config.dtype, parameters, targets, row_scale),
            zeros(features.shape, config.dtype, parameters, targets, row_scale),
            stored_form(head),
            _read(head, axes, jnp.zeros((), jnp.int32), config),
        )
        rows, d_features, stored, pending = jax.lax.fori_loop(0, layout.steps, step, initial)
        return rows, d_features, as_floats(_write(stored, stored_form(pending), axes, layout.steps - 1, config))

    if jnp.dtype(jnp.bfloat16) not in jax.tree.leaves(dtypes):
        return loop(as_bits=False)
    return jax.lax.platform_dependent(cpu=lambda: loop(as_bits=True), default=lambda: loop(as_bits=False))
