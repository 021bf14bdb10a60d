"""The chunk loop shared by the fused losses: BCE of ``features @ kernel + bias`` over chunks of classes.

Why chunks. With C in the hundreds of thousands the logits ``features @ kernel + bias``, their labels and
their gradient are the largest arrays of a train step, larger than the model. Here the classes are visited in
chunks inside one ``lax.fori_loop``: a chunk's logits are formed by a matmul, fed to the elementwise BCE core
(``_elementwise.bce_with_logits``, the same function and ``custom_jvp`` rule as
:func:`jaxbce.binary_cross_entropy_with_logits`) and dropped, so no array of size rows x C is ever held.
:func:`row_losses` is the value-only loop (one matmul per chunk); :func:`row_losses_and_gradients` forms the
gradients of a row-weighted sum as it goes (three matmuls per chunk). ``_linear`` and ``_contrastive`` wrap them
in their ``custom_vjp`` rules.

Why strided chunks on several devices. Chunk ``j`` holds the classes ``j, j + n, j + 2n, ...`` (``n`` chunks):
the kernel ``(D, C)`` is viewed as ``(D, chunk, n)`` (a free reshape) and the loop indexes its last axis. When
the kernel is sharded over classes, every chunk then spans all class shards, and GSPMD partitions each step
without moving the kernel; with contiguous blocks each step would slice a sharded axis and all-gather it. On one
device nothing can be sharded, and chunk ``j`` is the block of classes ``j * chunk, ..., (j + 1) * chunk - 1``
(the kernel viewed as ``(D, n, chunk)``): each step reads and writes its columns with unit stride, where the
strided view touches one float per cache line (the fused loss's step took 1.5x as long on this CPU, the fused
update's 1.6x; ``Layout.contiguous``).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbce import _elementwise
from jaxbce._numerics import weighted

# A chunk's float32 logits and their gradient are about this many elements each: 8 MiB, small next to a
# kernel worth chunking, and large enough that each matmul runs at full speed (2^21 / 1024 rows = 2048
# classes per chunk).
CHUNK_ELEMENTS = 2**21
# Below this many classes a matmul chunk is too thin to run at full speed.
MIN_CHUNK = 256


class Layout(NamedTuple):
    classes: int  # C
    chunk: int  # classes per chunk
    chunks: int  # n; chunk * chunks >= C
    contiguous: bool = False  # chunk j holds the classes j * chunk + i (one device), else j + n * i

    @property
    def axis(self) -> int:
        """The axis of the chunk index in an array laid out by ``by_chunk``."""
        return -2 if self.contiguous else -1

    @property
    def padding(self) -> int:
        return self.chunk * self.chunks - self.classes

    @property
    def padded(self) -> bool:
        """Whether the last chunk has padding classes (assumed where C is a symbolic dimension)."""
        return not isinstance(self.padding, int) or self.padding > 0


class Config(NamedTuple):
    """What the loop needs besides arrays: static and hashable."""

    layout: Layout
    label_smoothing: float
    ignore_label: float | None
    precision: Any
    dtype: np.dtype  # compute dtype of logits, losses and gradients


class Parameters(NamedTuple):
    """The differentiable arrays, classes laid out as ``(..., chunk, chunks)``."""

    features: jax.Array  # (N, D), masked rows zeroed
    kernel: jax.Array  # (D, chunk, chunks)
    bias: jax.Array | None  # (chunk, chunks)
    pos_weight: jax.Array | None  # (chunk, chunks)
    weight: jax.Array | None = None  # per class (chunk, chunks) or per element (N, chunk, chunks)


class Targets(NamedTuple):
    """The labels: dense ``(N, chunk, chunks)`` or sparse positives ``(N, P)``, and the row and class masks."""

    labels: jax.Array | None
    positives: jax.Array | None
    keep: jax.Array | None  # (N,) bool
    classes_kept: jax.Array | None = None  # (chunk, chunks) bool: the contrastive loss's padded columns


def one_device() -> bool:
    """Whether nothing can be sharded: contiguous chunks then (module notes)."""
    return jax.device_count() == 1


def choose_layout(classes: int, rows: int, chunk_size: int | None) -> Layout:
    """Chunks of ``chunk_size`` classes (a checked positive int), or, for None, about ``CHUNK_ELEMENTS`` logits
    of ``rows`` rows each and at least ``MIN_CHUNK`` classes; contiguous on one device, strided on several."""
    target = chunk_size or max(MIN_CHUNK, CHUNK_ELEMENTS // max(rows, 1))
    contiguous = one_device()
    if not isinstance(classes, int):  # a symbolic C (jax.export): a static chunk, a symbolic number of them
        return Layout(classes, target, -(-classes // target), contiguous)
    chunks = -(-classes // target)
    if chunk_size is None:
        # Prefer a number of chunks that divides C (no padded copy of the kernel), at most halving the chunk.
        chunks = next((n for n in range(chunks, 2 * chunks + 1) if classes % n == 0), chunks)
    chunks = max(chunks, 1)
    return Layout(classes, -(-classes // chunks), chunks, contiguous)


def by_chunk(array: jax.Array, layout: Layout, fill=0) -> jax.Array:
    """``(..., C)`` as ``(..., chunk, chunks)`` (``(..., chunks, chunk)`` where contiguous); a copy padded with
    ``fill`` only where C is not a multiple."""
    if layout.padded:
        array = jnp.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, layout.padding)], constant_values=fill)
    sizes = (layout.chunks, layout.chunk) if layout.contiguous else (layout.chunk, layout.chunks)
    return array.reshape(*array.shape[:-1], *sizes)


def from_chunks(array: jax.Array, layout: Layout) -> jax.Array:
    """The inverse of ``by_chunk``: back to ``(..., C)``."""
    return array.reshape(*array.shape[:-2], layout.chunk * layout.chunks)[..., : layout.classes]


def take(array: jax.Array | None, j: jax.Array, layout: Layout) -> jax.Array | None:
    """Chunk ``j`` of an array laid out by ``by_chunk``."""
    return None if array is None else jax.lax.dynamic_index_in_dim(array, j, axis=layout.axis, keepdims=False)


def put(array: jax.Array, chunk: jax.Array, j: jax.Array, layout: Layout) -> jax.Array:
    """``array`` with chunk ``j`` replaced by ``chunk`` (in place inside the loop)."""
    return jax.lax.dynamic_update_index_in_dim(array, chunk.astype(array.dtype), j, axis=layout.axis)


def _classes(layout: Layout, j: jax.Array) -> jax.Array:
    """The classes of chunk ``j``."""
    i = jnp.arange(layout.chunk)
    return j * layout.chunk + i if layout.contiguous else i * layout.chunks + j


def _dot(config: Config, a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    dimensions = (((contract[0],), (contract[1],)), ((), ()))
    return jax.lax.dot_general(a, b, dimensions, precision=config.precision, preferred_element_type=config.dtype)


def _chunk_labels(targets: Targets, j: jax.Array, config: Config) -> tuple[jax.Array, jax.Array | None]:
    """The labels of chunk ``j`` and, with ``ignore_label``, which of them are known (None: all)."""
    layout = config.layout
    if targets.labels is not None:
        labels = take(targets.labels, j, layout)
        known = None if config.ignore_label is None else labels != config.ignore_label
        keep = both(None if targets.keep is None else targets.keep[:, None], known)
        labels = labels.astype(config.dtype)
        # Masked rows may hold NaN labels (padding), ignored elements their ignore label; the core sees 0 there,
        # as in the elementwise losses.
        return (labels if keep is None else jnp.where(keep, labels, 0)), known
    positives = targets.positives
    if layout.contiguous:
        chunk_of, index = positives // layout.chunk, positives % layout.chunk
    else:
        chunk_of, index = positives % layout.chunks, positives // layout.chunks
    index = jnp.where((positives >= 0) & (chunk_of == j), index, layout.chunk)  # out of bounds: dropped
    # A scatter per row (batched over rows, so that a row-sharded batch partitions without gathering the
    # indices); a repeated class is set twice, counted once.
    zeros = jnp.zeros((layout.chunk,), config.dtype)
    return jax.vmap(lambda row: zeros.at[row].set(1, mode="drop"))(index), None


def both(a: jax.Array | None, b: jax.Array | None) -> jax.Array | None:
    """a & b, for masks of which None means all True."""
    return b if a is None else a if b is None else a & b


def _chunk_inputs(parameters: Parameters, targets: Targets, j: jax.Array, config: Config):
    """Logits, labels, pos_weight, weight and element mask (padded classes and ignored labels; None for none) of
    chunk ``j``."""
    layout = config.layout
    logits = _dot(config, parameters.features, take(parameters.kernel, j, layout), contract=(1, 0))
    if parameters.bias is not None:
        logits = logits + take(parameters.bias, j, layout).astype(config.dtype)
    pos_weight, weight = take(parameters.pos_weight, j, layout), take(parameters.weight, j, layout)
    pos_weight, weight = (None if a is None else a.astype(config.dtype) for a in (pos_weight, weight))
    valid = None
    if layout.padded:
        valid = _classes(layout, j) < layout.classes
    labels, known = _chunk_labels(targets, j, config)
    return logits, labels, pos_weight, weight, both(both(valid, known), take(targets.classes_kept, j, layout))


def _elementwise_loss(config: Config, logits, labels, pos_weight, weight, valid) -> jax.Array:
    loss = _elementwise.bce_with_logits(logits, labels, pos_weight, config.label_smoothing)
    if weight is not None:
        loss = weighted(weight, loss)  # a zero weight removes its element even where its loss is infinite
    return loss if valid is None else jnp.where(valid, loss, 0)


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
        return rows + _elementwise_loss(config, *_chunk_inputs(parameters, targets, j, config)).sum(axis=-1)

    initial = zeros(parameters.features.shape[:1], config.dtype, parameters, targets)
    return jax.lax.fori_loop(0, config.layout.chunks, step, initial)


def _chunk_gradients(config: Config, parameters: Parameters, targets: Targets, row_scale: jax.Array, j: jax.Array):
    """Chunk ``j``'s gradients of ``sum(row_scale * row_losses)`` in its logits, pos_weight and weight, and its
    row losses."""
    logits, labels, pos_weight, weight, valid = _chunk_inputs(parameters, targets, j, config)

    def scaled_sum(x, pw, w):
        loss = _elementwise_loss(config, x, labels, pw, w, valid)
        return jnp.sum(row_scale[:, None] * loss), loss.sum(axis=-1)

    total, pullback, chunk_rows = jax.vjp(scaled_sum, logits, pos_weight, weight, has_aux=True)
    return (*pullback(jnp.ones_like(total)), chunk_rows)


def row_losses_and_gradients(
    config: Config, parameters: Parameters, targets: Targets, row_scale: jax.Array, wanted: Parameters
) -> tuple[jax.Array, Parameters]:
    """Per-row losses and the gradients of ``sum(row_scale * row_losses)`` in the parameters that ``wanted``
    marks True (None for the others), chunk by chunk."""
    features, kernel, layout = parameters.features, parameters.kernel, config.layout

    def step(j, carry):
        rows, gradients = carry
        d_logits, d_pos_weight, d_weight, chunk_rows = _chunk_gradients(config, parameters, targets, row_scale, j)
        if gradients.features is not None:  # d_logits @ kernel_chunk.T, summed over chunks
            d_features = _dot(config, d_logits, take(kernel, j, layout), contract=(1, 1))
            gradients = gradients._replace(features=gradients.features + d_features)
        if gradients.kernel is not None:  # features.T @ d_logits, this chunk's columns
            gradients = gradients._replace(
                kernel=put(gradients.kernel, _dot(config, features, d_logits, (0, 0)), j, layout)
            )
        if gradients.bias is not None:
            gradients = gradients._replace(bias=put(gradients.bias, d_logits.sum(axis=0), j, layout))
        if gradients.pos_weight is not None:
            gradients = gradients._replace(pos_weight=put(gradients.pos_weight, d_pos_weight, j, layout))
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
    return jax.lax.fori_loop(0, config.layout.chunks, step, initial)


class Head(NamedTuple):
    """What the update loop carries: the layer's kernel and bias (or None) laid out by ``by_chunk``, and the
    caller's ``rest`` (the optimizer state's leaves, laid out by chunks or not, as ``chunked`` says)."""

    kernel: jax.Array
    bias: jax.Array | None
    rest: list


def _read(head: Head, chunked: list[bool], j: jax.Array, layout: Layout) -> Head:
    rest = [take(leaf, j, layout) if by_chunks else leaf for leaf, by_chunks in zip(head.rest, chunked, strict=True)]
    return Head(take(head.kernel, j, layout), take(head.bias, j, layout), rest)


def _write(head: Head, values: Head, chunked: list[bool], j: jax.Array, layout: Layout) -> Head:
    rest = [
        put(leaf, value, j, layout) if by_chunks else value
        for leaf, value, by_chunks in zip(head.rest, values.rest, chunked, strict=True)
    ]
    bias = None if head.bias is None else put(head.bias, values.bias, j, layout)
    return Head(put(head.kernel, values.kernel, j, layout), bias, rest)


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
    chunked: list[bool],
    update: Callable,
) -> tuple[jax.Array, jax.Array, Head]:
    """Per-row losses, the features gradient of ``sum(row_scale * row_losses)``, and ``head`` with each chunk
    ``j`` replaced by ``update(j, kernel_gradient, bias_gradient, old)``: ``old`` is chunk ``j`` of ``head``
    (``(D, chunk)``, ``(chunk,)`` and the chunked state's chunks; the other leaves whole) and the gradients are
    chunk ``j``'s. ``parameters.kernel`` and ``.bias`` are not read: the kernel and bias are ``head``'s.

    Why each chunk is written one step late. With ``head`` donated, the loop updates the kernel and the state in
    place, and no kernel-sized gradient or update ever exists. But an optimizer's update reads several state
    arrays at once (Adam's new kernel reads both moments), and XLA fuses those reads of the old buffers into the
    fusions that write the other buffers in place; to keep every read ahead of every write it then copies each
    state array, a kernel-sized copy per step. So chunk ``j``'s new values are carried to the next step and
    written there first, and chunk ``j + 1`` is read from the buffers written: every read comes after the write,
    from data dependencies alone.

    Why bfloat16 arrays are carried as the integers of their bits on the CPU. XLA:CPU has no bfloat16
    dynamic-update-slice: it converts the whole array to float32, writes the chunk and converts it back, a pass
    over the kernel at every chunk (quadratic in C). A ``uint16`` array is written in place. What that costs is
    the views: XLA copies the bits of most bfloat16 arrays before the loop and back after it (it reuses the
    buffers of some, 0.3 of them at 2^20 classes). float16 arrays, and bfloat16 ones on GPUs and TPUs, are
    written in place as they are (``platform_dependent``; scripts/check_gpu_hlo.py compiles it for a GPU).
    """
    features, layout = parameters.features, config.layout
    dtypes = jax.tree.map(lambda array: array.dtype, head)

    def loop(as_bits: bool) -> tuple[jax.Array, jax.Array, Head]:
        stored_form = _as_bits if as_bits else lambda tree: tree
        as_floats = lambda stored: jax.tree.map(_from_bits, stored, dtypes)  # noqa: E731

        def step(j, carry):
            rows, d_features, stored, pending = carry
            # Chunk j - 1's new values (at j = 0, chunk 0 as it was).
            stored = _write(stored, stored_form(pending), chunked, jnp.maximum(j - 1, 0), layout)
            head = as_floats(stored)
            old = _read(head, chunked, j, layout)
            current = parameters._replace(kernel=head.kernel, bias=head.bias)
            d_logits, _, _, chunk_rows = _chunk_gradients(config, current, targets, row_scale, j)
            d_features = d_features + _dot(config, d_logits, old.kernel, contract=(1, 1))
            new = update(j, _dot(config, features, d_logits, (0, 0)), d_logits.sum(axis=0), old)
            return rows + chunk_rows, d_features, stored, new

        initial = (
            zeros(features.shape[:1], config.dtype, parameters, targets, row_scale),
            zeros(features.shape, config.dtype, parameters, targets, row_scale),
            stored_form(head),
            _read(head, chunked, jnp.zeros((), jnp.int32), layout),
        )
        rows, d_features, stored, pending = jax.lax.fori_loop(0, layout.chunks, step, initial)
        return rows, d_features, as_floats(_write(stored, stored_form(pending), chunked, layout.chunks - 1, layout))

    if jnp.dtype(jnp.bfloat16) not in jax.tree.leaves(dtypes):
        return loop(as_bits=False)
    return jax.lax.platform_dependent(cpu=lambda: loop(as_bits=True), default=lambda: loop(as_bits=False))
