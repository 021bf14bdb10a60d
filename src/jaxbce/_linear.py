"""Binary cross-entropy fused with the last linear layer: the ``(..., C)`` logits never exist.

Why chunks. With C in the hundreds of thousands the logits ``features @ kernel + bias``, their labels and
their gradient are the largest arrays of a train step, larger than the model. Here the classes are visited in
chunks inside one ``lax.fori_loop``: a chunk's logits are formed by a matmul, fed to the elementwise BCE core
(``_elementwise.bce_with_logits``, the same function and ``custom_jvp`` rule as
:func:`jaxbce.binary_cross_entropy_with_logits`) and dropped, so no array of size batch x C is ever held.

Why the gradients are formed in the forward pass. A ``jax.custom_vjp`` supplies the derivatives. For a
scalar loss (``"sum"``, ``"mean"``, ``"batchmean"``) the cotangent is one number, so the forward pass of
the VJP computes each chunk's gradient at once (as Liger Kernel does): three matmuls per chunk (logits,
``d features``, ``d kernel``) instead of the four of a backward pass that recomputes the logits, and the
backward pass only scales. A primal call that is not differentiated runs the value-only loop (one matmul
per chunk). For ``reduction="none"`` the cotangent is one number per example, so the backward pass runs the
same gradient loop with those numbers as the per-example scale (four matmuls per chunk in all).

Why strided chunks. Chunk ``j`` holds the classes ``j, j + n, j + 2n, ...`` (``n`` chunks): the kernel
``(D, C)`` is viewed as ``(D, chunk, n)`` (a free reshape) and the loop indexes its last axis. When the kernel
is sharded over classes, every chunk then spans all class shards, and GSPMD partitions each step without
moving the kernel; with contiguous blocks each step would slice a sharded axis and all-gather it.
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jaxbce import _elementwise, _pipeline
from jaxbce._pipeline import Arg, Role, check_fraction, jit_loss

REDUCTIONS = ("none", "sum", "mean", "batchmean")

# A chunk's float32 logits and their gradient are about this many elements each: 8 MiB, small next to a
# kernel worth chunking, and large enough that each matmul runs at full speed (2^21 / 1024 rows = 2048
# classes per chunk).
_CHUNK_ELEMENTS = 2**21
# Below this many classes a matmul chunk is too thin to run at full speed.
_MIN_CHUNK = 256


class _Layout(NamedTuple):
    classes: int  # C
    chunk: int  # classes per chunk
    chunks: int  # n; chunk * chunks >= C, and chunk j holds the classes j + n * i

    @property
    def padding(self) -> int:
        return self.chunk * self.chunks - self.classes

    @property
    def padded(self) -> bool:
        """Whether the last chunk has padding classes (assumed where C is a symbolic dimension)."""
        return not isinstance(self.padding, int) or self.padding > 0


class _Config(NamedTuple):
    """What the loop needs besides arrays: static and hashable."""

    layout: _Layout
    label_smoothing: float
    ignore_label: float | None
    precision: Any
    dtype: np.dtype  # compute dtype of logits, losses and gradients


class _Parameters(NamedTuple):
    """The differentiable arrays, classes laid out as ``(..., chunk, chunks)``."""

    features: jax.Array  # (N, D), masked rows zeroed
    kernel: jax.Array  # (D, chunk, chunks)
    bias: jax.Array | None  # (chunk, chunks)
    pos_weight: jax.Array | None  # (chunk, chunks)
    weight: jax.Array | None = None  # per class (chunk, chunks) or per element (N, chunk, chunks)


class _Targets(NamedTuple):
    """The labels: dense ``(N, chunk, chunks)`` or sparse positives ``(N, P)``, and the row and class masks."""

    labels: jax.Array | None
    positives: jax.Array | None
    keep: jax.Array | None  # (N,) bool
    classes_kept: jax.Array | None = None  # (chunk, chunks) bool: the contrastive loss's padded columns


def check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive Python int, got {chunk_size!r}")


def _choose_layout(classes: int, rows: int, chunk_size: int | None) -> _Layout:
    check_chunk_size(chunk_size)
    target = chunk_size or max(_MIN_CHUNK, _CHUNK_ELEMENTS // max(rows, 1))
    if not isinstance(classes, int):  # a symbolic C (jax.export): a static chunk, a symbolic number of them
        return _Layout(classes, target, -(-classes // target))
    chunks = -(-classes // target)
    if chunk_size is None:
        # Prefer a number of chunks that divides C (no padded copy of the kernel), at most halving the chunk.
        chunks = next((n for n in range(chunks, 2 * chunks + 1) if classes % n == 0), chunks)
    chunks = max(chunks, 1)
    return _Layout(classes, -(-classes // chunks), chunks)


def _by_chunk(array: jax.Array, layout: _Layout, fill=0) -> jax.Array:
    """``(..., C)`` as ``(..., chunk, chunks)``; a copy padded with ``fill`` only where C is not a multiple."""
    if layout.padded:
        array = jnp.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, layout.padding)], constant_values=fill)
    return array.reshape(*array.shape[:-1], layout.chunk, layout.chunks)


def _from_chunks(array: jax.Array, layout: _Layout) -> jax.Array:
    """The inverse of ``_by_chunk``: ``(..., chunk, chunks)`` back to ``(..., C)``."""
    return array.reshape(*array.shape[:-2], layout.chunk * layout.chunks)[..., : layout.classes]


def _take(array: jax.Array | None, j: jax.Array) -> jax.Array | None:
    """Chunk ``j`` of an array laid out by ``_by_chunk``."""
    return None if array is None else jax.lax.dynamic_index_in_dim(array, j, axis=-1, keepdims=False)


def _put(array: jax.Array, chunk: jax.Array, j: jax.Array) -> jax.Array:
    """``array`` with chunk ``j`` replaced by ``chunk`` (in place inside the loop)."""
    return jax.lax.dynamic_update_index_in_dim(array, chunk.astype(array.dtype), j, axis=-1)


def _dot(config: _Config, a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    dimensions = (((contract[0],), (contract[1],)), ((), ()))
    return jax.lax.dot_general(a, b, dimensions, precision=config.precision, preferred_element_type=config.dtype)


def _chunk_labels(targets: _Targets, j: jax.Array, config: _Config) -> tuple[jax.Array, jax.Array | None]:
    """The labels of chunk ``j`` and, with ``ignore_label``, which of them are known (None: all)."""
    layout = config.layout
    if targets.labels is not None:
        labels = _take(targets.labels, j)
        known = None if config.ignore_label is None else labels != config.ignore_label
        keep = _both(None if targets.keep is None else targets.keep[:, None], known)
        labels = labels.astype(config.dtype)
        # Masked rows may hold NaN labels (padding), ignored elements their ignore label; the core sees 0 there,
        # as in the elementwise losses.
        return (labels if keep is None else jnp.where(keep, labels, 0)), known
    positives = targets.positives
    here = (positives >= 0) & (positives % layout.chunks == j)
    index = jnp.where(here, positives // layout.chunks, layout.chunk)  # out of bounds: dropped
    # A scatter per row (batched over rows, so that a row-sharded batch partitions without gathering the
    # indices); a repeated class is set twice, counted once.
    zeros = jnp.zeros((layout.chunk,), config.dtype)
    return jax.vmap(lambda row: zeros.at[row].set(1, mode="drop"))(index), None


def _both(a: jax.Array | None, b: jax.Array | None) -> jax.Array | None:
    """a & b, for masks of which None means all True."""
    return b if a is None else a if b is None else a & b


def _chunk_inputs(parameters: _Parameters, targets: _Targets, j: jax.Array, config: _Config):
    """Logits, labels, pos_weight, weight and element mask (padded classes and ignored labels; None for none) of
    chunk ``j``."""
    logits = _dot(config, parameters.features, _take(parameters.kernel, j), contract=(1, 0))
    if parameters.bias is not None:
        logits = logits + _take(parameters.bias, j).astype(config.dtype)
    pos_weight, weight = _take(parameters.pos_weight, j), _take(parameters.weight, j)
    pos_weight, weight = (None if a is None else a.astype(config.dtype) for a in (pos_weight, weight))
    valid = None
    if config.layout.padded:
        valid = jnp.arange(config.layout.chunk) * config.layout.chunks + j < config.layout.classes
    labels, known = _chunk_labels(targets, j, config)
    return logits, labels, pos_weight, weight, _both(_both(valid, known), _take(targets.classes_kept, j))


def _elementwise_loss(config: _Config, logits, labels, pos_weight, weight, valid) -> jax.Array:
    loss = _elementwise.bce_with_logits(logits, labels, pos_weight, config.label_smoothing)
    if weight is not None:
        loss = _weighted(weight, loss)  # a zero weight removes its element even where its loss is infinite
    return loss if valid is None else jnp.where(valid, loss, 0)


def _zeros(shape, dtype, *inputs) -> jax.Array:
    """Zeros that vary over the ``shard_map`` axes that any of ``inputs`` varies over (``zeros_like`` keeps
    them; outside ``shard_map`` there are none): a loop carry must have the type of what the body makes of it."""
    zero = sum(jnp.zeros_like(leaf, dtype=dtype, shape=()) for leaf in jax.tree.leaves(inputs))
    return jnp.zeros(shape, dtype) + zero


def _vary_together(tree, *inputs):
    """``tree`` with each leaf varying over every ``shard_map`` axis that ``inputs`` vary over. Inside
    ``shard_map`` with the classes local, the features are the same on every class shard while the kernel
    is not; adding zeros outside the ``custom_vjp`` lets JAX's autodiff sum the features' gradient over the
    class shards (the transpose of that implicit broadcast), as it would for the materialised logits.
    Everywhere else the zeros are constants that XLA removes."""
    return jax.tree.map(lambda leaf: leaf + _zeros((), leaf.dtype, *inputs), tree)


def _row_losses_value(config: _Config, parameters: _Parameters, targets: _Targets) -> jax.Array:
    """Per-row sums over classes of the loss, one matmul per chunk."""

    def step(j, rows):
        return rows + _elementwise_loss(config, *_chunk_inputs(parameters, targets, j, config)).sum(axis=-1)

    initial = _zeros(parameters.features.shape[:1], config.dtype, parameters, targets)
    return jax.lax.fori_loop(0, config.layout.chunks, step, initial)


def _row_losses_and_gradients(
    config: _Config, parameters: _Parameters, targets: _Targets, row_scale: jax.Array, wanted: _Parameters
) -> tuple[jax.Array, _Parameters]:
    """Per-row losses and the gradients of ``sum(row_scale * row_losses)`` in the parameters that ``wanted``
    marks True (None for the others), chunk by chunk."""
    features, kernel = parameters.features, parameters.kernel

    def step(j, carry):
        rows, gradients = carry
        logits, labels, pos_weight, weight, valid = _chunk_inputs(parameters, targets, j, config)

        def scaled_sum(x, pw, w):
            loss = _elementwise_loss(config, x, labels, pw, w, valid)
            return jnp.sum(row_scale[:, None] * loss), loss.sum(axis=-1)

        total, pullback, chunk_rows = jax.vjp(scaled_sum, logits, pos_weight, weight, has_aux=True)
        d_logits, d_pos_weight, d_weight = pullback(jnp.ones_like(total))
        if gradients.features is not None:  # d_logits @ kernel_chunk.T, summed over chunks
            d_features = _dot(config, d_logits, _take(kernel, j), contract=(1, 1))
            gradients = gradients._replace(features=gradients.features + d_features)
        if gradients.kernel is not None:  # features.T @ d_logits, this chunk's columns
            gradients = gradients._replace(kernel=_put(gradients.kernel, _dot(config, features, d_logits, (0, 0)), j))
        if gradients.bias is not None:
            gradients = gradients._replace(bias=_put(gradients.bias, d_logits.sum(axis=0), j))
        if gradients.pos_weight is not None:
            gradients = gradients._replace(pos_weight=_put(gradients.pos_weight, d_pos_weight, j))
        if gradients.weight is not None:
            gradients = gradients._replace(weight=_put(gradients.weight, d_weight, j))
        return rows + chunk_rows, gradients

    def zeros_like(name: str, array: jax.Array | None):
        if array is None or not getattr(wanted, name):
            return None
        return _zeros(array.shape, config.dtype if name == "features" else array.dtype, parameters, targets, row_scale)

    initial = (
        _zeros(features.shape[:1], config.dtype, parameters, targets, row_scale),
        _Parameters(*(zeros_like(name, a) for name, a in zip(_Parameters._fields, parameters, strict=True))),
    )
    return jax.lax.fori_loop(0, config.layout.chunks, step, initial)


def _weighted(weight: jax.Array, losses: jax.Array) -> jax.Array:
    """``weight * losses``, where a zero weight (or scale, or masked row) removes its element even where its loss
    is infinite (0 * inf is 0)."""
    return weight * jnp.where((weight == 0) & jnp.isinf(losses), 0, losses)


def _weighted_sum(row_scale: jax.Array, rows: jax.Array) -> jax.Array:
    return jnp.sum(_weighted(row_scale, rows))


def _unwrap(tree):
    """Values and ``perturbed`` flags of the ``CustomVJPPrimal`` leaves that ``symbolic_zeros`` hands ``fwd``."""
    is_primal = lambda leaf: hasattr(leaf, "perturbed")  # noqa: E731
    values = jax.tree.map(lambda p: p.value, tree, is_leaf=is_primal)
    perturbed = jax.tree.map(lambda p: p.perturbed, tree, is_leaf=is_primal)
    return values, perturbed


def _reject_label_gradients(targets_perturbed: _Targets) -> None:
    if any(jax.tree.leaves(targets_perturbed)):
        raise ValueError(
            "linear_binary_cross_entropy does not differentiate its labels, positives or where; "
            "wrap them in jax.lax.stop_gradient (labels are data here)"
        )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _weighted_total(config: _Config, parameters: _Parameters, targets: _Targets, row_scale: jax.Array) -> jax.Array:
    """``sum(row_scale * row_losses)``: the scalar reductions."""
    return _weighted_sum(row_scale, _row_losses_value(config, parameters, targets))


# Why every gradient is a residual of the same tree, formed or not. JAX traces a ``custom_vjp`` forward pass once
# per pattern of perturbed inputs, but keeps one residual tree per traced call (``fwd_jaxpr_from_zeros`` in
# ``jax/_src/interpreters/partial_eval.py`` resets the shared store for each new pattern; older JAX asserts that
# the backward pass returns the same tree on every call), and a jitted loss's traced call is shared by every use
# of it. Trees that depended on the pattern let the backward pass of one use unflatten another's residuals:
# zero or misplaced gradients, or a bare AssertionError. So each gradient is stored with a leading axis of
# length 1, or as an empty ``(0, *shape)`` array where it was not formed (no matmul, no memory); the backward
# pass returns zeros of that shape there, which JAX drops (the input was not perturbed) and XLA removes.
def _weighted_total_fwd(config, parameters, targets, row_scale):
    (parameters, wanted), (targets, targets_perturbed) = _unwrap(parameters), _unwrap(targets)
    _reject_label_gradients(targets_perturbed)
    rows, gradients = _row_losses_and_gradients(config, parameters, targets, row_scale.value, wanted)
    stored = _Parameters(
        *(
            None if p is None else jnp.zeros((0, *p.shape), p.dtype) if g is None else g[None]
            for p, g in zip(parameters, gradients, strict=True)
        )
    )
    return _weighted_sum(row_scale.value, rows), (stored, rows)


def _weighted_total_bwd(config, residuals, cotangent):
    stored, rows = residuals
    if isinstance(cotangent, SymbolicZero):
        cotangent = jnp.zeros((), config.dtype)
    scaled = _Parameters(
        *(
            None if g is None else (cotangent * g[0]).astype(g.dtype) if g.shape[0] else jnp.zeros(g.shape[1:], g.dtype)
            for g in stored
        )
    )
    return scaled, None, cotangent * rows


_weighted_total.defvjp(_weighted_total_fwd, _weighted_total_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _row_losses(config: _Config, parameters: _Parameters, targets: _Targets) -> jax.Array:
    """The per-row losses: ``reduction="none"``."""
    return _row_losses_value(config, parameters, targets)


def _row_losses_fwd(config, parameters, targets):
    (parameters, _), (targets, targets_perturbed) = _unwrap(parameters), _unwrap(targets)
    _reject_label_gradients(targets_perturbed)
    return _row_losses_value(config, parameters, targets), (parameters, targets)


def _row_losses_bwd(config, residuals, cotangent):
    parameters, targets = residuals
    if isinstance(cotangent, SymbolicZero):
        cotangent = jnp.zeros(parameters.features.shape[:1], config.dtype)
    every = _Parameters(True, True, True, True, True)
    _, gradients = _row_losses_and_gradients(config, parameters, targets, cotangent, every)
    return gradients, None


_row_losses.defvjp(_row_losses_fwd, _row_losses_bwd, symbolic_zeros=True)


def _kept_count(reduction, batch, classes, keep, known, dtype) -> jax.Array:
    """The denominator of ``"mean"`` (kept elements of the ``(..., C)`` logits) or ``"batchmean"`` (examples
    along the logits' leading axis that keep at least one element), counted as the materialised loss counts.
    ``keep`` masks examples, ``known`` (``ignore_label``) elements."""
    row_keep = jnp.ones(batch, bool) if keep is None else jnp.broadcast_to(keep, batch)
    if known is None:  # whole rows of C classes are kept or not
        element_keep, per_element = row_keep[..., None], classes
    else:
        element_keep, per_element = row_keep[..., None] & known, 1
    if reduction == "batchmean" and batch:  # (D,) features: the logits' one axis holds the examples
        return jnp.sum(jnp.any(element_keep, axis=tuple(range(1, element_keep.ndim))), dtype=dtype)
    return jnp.sum(element_keep, dtype=dtype) * per_element


class _Options(NamedTuple):
    """The static options of one call."""

    reduction: str
    label_smoothing: float
    ignore_label: float | None
    chunk_size: int | None
    precision: Any
    dtype: np.dtype  # compute dtype
    out_dtype: np.dtype


def _loss_by_chunks(options: _Options, features, kernel, labels, positives, bias, pos_weight, weight, keep):
    """The checked arguments laid out by chunks of classes, weighted, and reduced through the ``custom_vjp``
    loops above."""
    batch, classes = features.shape[:-1], kernel.shape[1]
    reduction, label_smoothing, ignore_label, chunk_size, precision, dtype, out_dtype = options
    known = None if ignore_label is None else labels != ignore_label
    rows = math.prod(batch)
    layout = _choose_layout(classes, rows if isinstance(rows, int) else 1024, chunk_size)
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
    parameters = _Parameters(
        features=flat_features,
        kernel=_by_chunk(kernel, layout),
        bias=None if bias is None else _by_chunk(bias.astype(dtype), layout),
        pos_weight=None
        if pos_weight is None
        else _by_chunk(jnp.broadcast_to(pos_weight.astype(dtype), (classes,)), layout, fill=1),
        weight=None if element_weight is None else _by_chunk(element_weight.astype(dtype), layout),
    )
    targets = _Targets(
        labels=None if labels is None else _by_chunk(labels.reshape(rows, classes), layout),
        positives=None if positives is None else positives.reshape(rows, positives.shape[-1]),
        keep=flat_keep,
    )
    config = _Config(layout, label_smoothing, ignore_label, precision, dtype)

    example_weight = jnp.ones((), dtype) if weight is None else weight.astype(dtype)
    if keep is not None:
        example_weight = jnp.where(keep, example_weight, 0)
    example_weight = jnp.broadcast_to(example_weight, batch).reshape(rows)
    parameters = _vary_together(parameters, parameters, targets)
    if reduction == "none":
        losses = _weighted(example_weight, _row_losses(config, parameters, targets))
        return losses.reshape(batch).astype(out_dtype)
    denominator = jnp.asarray(1, dtype)
    if reduction != "sum":
        denominator = _kept_count(reduction, batch, classes, keep, known, dtype)
    row_scale = _vary_together(example_weight / jnp.where(denominator == 0, 1, denominator), parameters, targets)
    return _weighted_total(config, parameters, targets, row_scale).astype(out_dtype)


@jit_loss
def linear_binary_cross_entropy(
    features: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike | None = None,
    *,
    positives: jax.typing.ArrayLike | None = None,
    bias: jax.typing.ArrayLike | None = None,
    weight: jax.typing.ArrayLike | None = None,
    pos_weight: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """Binary cross-entropy of the logits ``features @ kernel + bias``, without ever forming them.

    Equal to ``binary_cross_entropy_with_logits(features @ kernel + bias, dense_labels, ...)`` summed over
    classes, but computed over chunks of classes inside one loop (see the module notes in
    ``jaxbce/_linear.py``), so that neither the ``(..., C)`` logits, nor their gradient, nor dense labels built
    from ``positives`` ever exist, in the forward or the backward pass. Per element the loss is that of
    :func:`binary_cross_entropy_with_logits`, from the same exact core and gradient rule:

        loss[n] = sum_c w[n, c] * (pw[c] * y[n, c] * softplus(-z[n, c]) + (1 - y[n, c]) * softplus(z[n, c]))
        z = features @ kernel + bias

    The matmuls accumulate in float32 (``preferred_element_type``; float64 under x64) and the logits stay in
    float32 even for bfloat16 inputs, so 16-bit inputs get the loss of float32 logits (the materialised
    computation would round the logits to 16 bits first). Memory beyond the arguments and the outputs is a
    few arrays of ``rows x chunk`` and, for ``C`` not a multiple of the number of chunks, one padded copy of
    the kernel (and of dense labels): pick a ``C`` with small factors, or a ``chunk_size`` that divides it.

    Args:
      features: ``(..., D)`` float16, bfloat16, float32 or float64: the last hidden layer.
      kernel: ``(D, C)`` real floating, the Flax ``Dense``/``Linear`` layout.
      labels: dense labels ``(..., C)`` in [0, 1] (floating, integer or bool; soft labels allowed). Exactly
        one of ``labels`` and ``positives``.
      positives: sparse labels ``(..., P)``, integer class indices padded with ``-1``: the listed classes are
        1, all others 0, and a repeated index counts once. Indices outside ``[-1, C)`` are ignored (and
        reported by the value checks, :func:`jaxbce.checked`).
      bias: optional ``(C,)`` real floating.
      weight: optional non-negative weight broadcastable to the logits' shape ``features.shape[:-1] + (C,)``,
        as in :func:`binary_cross_entropy_with_logits`: ``(..., 1)`` per example, ``(C,)`` per class,
        ``(..., C)`` per element (held whole, like dense labels). A weight of shape ``features.shape[:-1]``
        is a ``ValueError`` that suggests ``weight[..., None]`` (unless its last size is ``C``: per class).
        A zero weight removes its element even where its loss is infinite.
      pos_weight: optional non-negative weight of the positive term, a scalar or ``(C,)``.
      label_smoothing: static float ``s`` in [0, 1]; labels become ``y * (1 - s) + s / 2`` (Keras).
      where: optional per-example bool mask broadcastable to ``features.shape[:-1]``; False examples
        contribute exactly 0 to the value and every gradient, even if their features or labels are NaN.
      ignore_label: static int or float, or None: dense labels equal to it (the -1 / 255 conventions of
        partially labelled data) are masked element by element, count in no mean, and are exempt from the
        labels value check. Only with ``labels`` (sparse ``positives`` list the known positives already;
        passing both is a ``ValueError``).
      reduction: ``"none"`` (the per-example loss summed over classes, shape ``features.shape[:-1]``, 0 where
        masked), ``"sum"``, ``"mean"`` (default; divides by kept examples times ``C``, or with
        ``ignore_label`` by the kept elements) or ``"batchmean"`` (divides by the kept examples along the
        leading axis, those with at least one known label: for ``(B, T, D)`` features the ``B`` sequences, not
        the ``B x T`` rows). Each is what the materialised ``binary_cross_entropy_with_logits`` of the
        ``(..., C)`` logits gives, for features of any rank. A mean over nothing is 0 with zero gradient.
      chunk_size: static number of classes per chunk (at most; the chunks are equal). None picks it from the
        shapes: about 2^21 logits per chunk, at least 256 classes, preferring a number of chunks that divides
        ``C``. When the kernel is sharded over ``S`` devices along classes, a chunk that is a multiple of
        ``S`` keeps every step local.
      precision: static ``jax.lax.Precision`` of the matmuls (forward and backward), as for ``jnp.dot``.

    Returns:
      The loss in the promoted dtype of ``features`` and ``kernel``: a scalar, or ``features.shape[:-1]`` for
      ``"none"``.

    Gradients: reverse mode (``jax.grad``, ``jax.vjp``) in ``features``, ``kernel``, ``bias``, ``pos_weight``
    and ``weight``, equal to the materialised computation's to float32 summation-order rounding; they are
    formed chunk by chunk (for the scalar reductions in the forward pass of the VJP: three matmuls per chunk
    with ``features`` and ``kernel`` differentiated, two with one of them, one with neither). ``labels``,
    ``positives`` and ``where`` are data: differentiating with respect to them is a ``ValueError``. Tested
    against the materialised loss for every subset of the differentiable arguments, called several times in
    one objective with different subsets or under ``stop_gradient``, and under ``jit``, ``vmap`` (grad of vmap
    and vmap of grad), ``lax.scan``, ``fori_loop``, ``cond``, ``switch`` and ``jax.checkpoint`` (every policy)
    (``tests/test_transformations.py``). Second derivatives work as reverse-over-reverse and forward-over-reverse
    (``jax.hessian``); they differentiate the chunk loop itself and so hold ``rows x C`` numbers, as the
    materialised loss does. Forward mode alone (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) is not supported
    (a ``jax.custom_vjp``; JAX raises a ``TypeError``).

    Raises:
      TypeError: a floating argument of another dtype, integer-free ``positives``, non-bool ``where``.
      ValueError: both or neither of ``labels`` and ``positives``; ``kernel`` not ``(D, C)`` for the
        ``D`` of ``features``; ``labels`` not ``(..., C)``; ``bias``, ``pos_weight``, ``weight`` or ``where``
        of a wrong shape; unknown ``reduction``; bad ``chunk_size`` or ``label_smoothing``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxbce
      >>> features = jnp.array([[1.0, -2.0], [0.5, 0.0]])
      >>> kernel = jnp.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
      >>> positives = jnp.array([[0, -1], [2, 1]])  # row 0: class 0; row 1: classes 2 and 1
      >>> jaxbce.linear_binary_cross_entropy(features, kernel, positives=positives)
      Array(0.6109767, dtype=float32)
      >>> jaxbce.binary_cross_entropy_with_logits(features @ kernel, jnp.array([[1, 0, 0], [0, 1, 1]]))
      Array(0.6109767, dtype=float32)
      >>> jaxbce.linear_binary_cross_entropy(features, kernel, positives=positives, reduction="none")
      Array([1.0245588, 2.6413012], dtype=float32)
      >>> partial = jnp.array([[1, -1, 0], [0, 1, 1]])  # -1: unknown label, ignored
      >>> jaxbce.linear_binary_cross_entropy(features, kernel, partial, ignore_label=-1)
      Array(0.729542, dtype=float32)
    """
    label_smoothing = check_fraction("label_smoothing", label_smoothing)
    ignore_label = _pipeline.check_ignore_label(ignore_label)
    _pipeline.check_reduction(reduction, valid=REDUCTIONS)
    features = _pipeline.as_checked_array(Arg("features", features, Role.LOGITS))
    kernel = _pipeline.as_checked_array(Arg("kernel", kernel, Role.LOGITS))
    if features.ndim < 1:
        raise ValueError("features must have shape (..., D), got a scalar")
    if kernel.ndim != 2 or kernel.shape[0] != features.shape[-1]:
        raise ValueError(
            f"kernel must have shape (D, C) with D = features.shape[-1] = {features.shape[-1]}, got kernel "
            f"{kernel.shape} and features {features.shape}"
        )
    batch, classes = features.shape[:-1], kernel.shape[1]
    out_dtype = jnp.result_type(features.dtype, kernel.dtype)
    dtype = _pipeline.compute_dtype(out_dtype)

    if (labels is None) == (positives is None):
        raise ValueError("pass exactly one of labels (dense, (..., C)) and positives (sparse, (..., P))")
    if labels is not None:
        labels = _pipeline.as_checked_array(Arg("labels", labels, Role.LABELS))
        if labels.shape != (*batch, classes):
            raise ValueError(
                f"labels must have shape features.shape[:-1] + (C,) = {(*batch, classes)}, got {labels.shape}"
            )
    else:
        if ignore_label is not None:
            raise ValueError("ignore_label applies to dense labels; positives list the known positive classes")
        positives = _pipeline.as_array(Arg("positives", positives, Role.LABELS))
        if not jnp.issubdtype(positives.dtype, jnp.integer):
            raise TypeError(f"positives must have an integer dtype, got {positives.dtype}")
        if positives.ndim != len(batch) + 1 or positives.shape[:-1] != batch:
            raise ValueError(
                f"positives must have shape features.shape[:-1] + (P,) = {(*batch, 'P')}, got {positives.shape}"
            )
    if bias is not None:
        bias = _pipeline.as_checked_array(Arg("bias", bias, Role.LOGITS))
        if bias.shape != (classes,):
            raise ValueError(f"bias must have shape (C,) = {(classes,)}, got {bias.shape}")
    if pos_weight is not None:
        pos_weight = _pipeline.as_checked_array(Arg("pos_weight", pos_weight, Role.NON_NEGATIVE))
        _pipeline.check_broadcasts("pos_weight", pos_weight.shape, (classes,), "the classes (C,)")
    if weight is not None:
        weight = _pipeline.as_checked_array(Arg("weight", weight, Role.NON_NEGATIVE))
        if weight.ndim and weight.shape == batch and batch[-1] != classes:
            raise ValueError(
                f"weight of shape {weight.shape} is per example: pass weight[..., None] (shape "
                f"{(*batch, 1)}); weight broadcasts against the logits' shape {(*batch, classes)} as in "
                "binary_cross_entropy_with_logits, so (C,) is per class"
            )
        _pipeline.check_broadcasts("weight", weight.shape, (*batch, classes), "the logits features.shape[:-1] + (C,)")
    keep = None if where is None else _pipeline.as_mask(where, batch, "features.shape[:-1]")
    if _pipeline.value_checks_enabled():
        known = None if ignore_label is None else labels != ignore_label
        example_keep = None if keep is None else keep[..., None]
        for name, role, array, mask in (
            ("features", Role.LOGITS, features, example_keep),
            ("labels", Role.LABELS, labels, _both(example_keep, known)),
            ("weight", Role.NON_NEGATIVE, weight, example_keep),
            ("pos_weight", Role.NON_NEGATIVE, pos_weight, None),
        ):
            if array is not None:
                _pipeline.register_value_checks(name, role, array, mask)
        if positives is not None:
            ok = (positives >= -1) & (positives < classes)
            if keep is not None:
                ok = ok | ~keep[..., None]
            _pipeline.check_values(
                "positives", positives, ok, f"must be class indices in [-1, {classes}) (-1: padding)"
            )

    options = _Options(reduction, label_smoothing, ignore_label, chunk_size, precision, dtype, out_dtype)
    rows_spec = (_pipeline.explicit_spec(features) or ())[:-1] if reduction == "none" else ()
    arrays = (features, kernel, labels, positives, bias, pos_weight, weight, keep)
    return _pipeline.with_auto_axes(functools.partial(_loss_by_chunks, options), *arrays, out_spec=rows_spec)
