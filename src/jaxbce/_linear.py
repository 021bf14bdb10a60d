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

from jaxbce import _chunks
from jaxbce._arguments import (
    Role,
    as_mask,
    check_broadcasts,
    check_chunk_size,
    check_fraction,
    check_ignore_label,
    check_reduction,
    check_shape,
    checked_array,
    compute_dtype,
    optional_array,
)
from jaxbce._jit import jit_loss
from jaxbce._numerics import round_stochastically, weighted
from jaxbce._reductions import denominator
from jaxbce._sharding import explicit_spec, with_auto_axes
from jaxbce._value_checks import check_values, register_value_checks, value_checks_enabled

REDUCTIONS = ("none", "sum", "mean", "batchmean")


def _weighted_sum(row_scale: jax.Array, rows: jax.Array) -> jax.Array:
    return jnp.sum(weighted(row_scale, rows))


def _unwrap(tree):
    """Values and ``perturbed`` flags of the ``CustomVJPPrimal`` leaves that ``symbolic_zeros`` hands ``fwd``."""
    is_primal = lambda leaf: hasattr(leaf, "perturbed")  # noqa: E731
    values = jax.tree.map(lambda p: p.value, tree, is_leaf=is_primal)
    perturbed = jax.tree.map(lambda p: p.perturbed, tree, is_leaf=is_primal)
    return values, perturbed


def _reject_label_gradients(targets_perturbed: _chunks.Targets) -> None:
    if any(jax.tree.leaves(targets_perturbed)):
        raise ValueError(
            "linear_binary_cross_entropy does not differentiate its labels, positives or where; "
            "wrap them in jax.lax.stop_gradient (labels are data here)"
        )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _weighted_total(
    config: _chunks.Config, parameters: _chunks.Parameters, targets: _chunks.Targets, row_scale: jax.Array
) -> jax.Array:
    """``sum(row_scale * row_losses)``: the scalar reductions."""
    return _weighted_sum(row_scale, _chunks.row_losses(config, parameters, targets))


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
    rows, gradients = _chunks.row_losses_and_gradients(config, parameters, targets, row_scale.value, wanted)
    stored = _chunks.Parameters(
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
    scaled = _chunks.Parameters(
        *(
            None if g is None else (cotangent * g[0]).astype(g.dtype) if g.shape[0] else jnp.zeros(g.shape[1:], g.dtype)
            for g in stored
        )
    )
    return scaled, None, cotangent * rows


_weighted_total.defvjp(_weighted_total_fwd, _weighted_total_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _row_losses(config: _chunks.Config, parameters: _chunks.Parameters, targets: _chunks.Targets) -> jax.Array:
    """The per-row losses: ``reduction="none"``."""
    return _chunks.row_losses(config, parameters, targets)


def _row_losses_fwd(config, parameters, targets):
    (parameters, _), (targets, targets_perturbed) = _unwrap(parameters), _unwrap(targets)
    _reject_label_gradients(targets_perturbed)
    return _chunks.row_losses(config, parameters, targets), (parameters, targets)


def _row_losses_bwd(config, residuals, cotangent):
    parameters, targets = residuals
    if isinstance(cotangent, SymbolicZero):
        cotangent = jnp.zeros(parameters.features.shape[:1], config.dtype)
    every = _chunks.Parameters(True, True, True, True, True)
    _, gradients = _chunks.row_losses_and_gradients(config, parameters, targets, cotangent, every)
    return gradients, None


_row_losses.defvjp(_row_losses_fwd, _row_losses_bwd, symbolic_zeros=True)


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


class _Options(NamedTuple):
    """The static options of one call."""

    reduction: str
    label_smoothing: float
    ignore_label: float | None
    chunk_size: int | None
    precision: Any
    dtype: np.dtype  # compute dtype
    out_dtype: np.dtype


class _ByChunks(NamedTuple):
    """The checked arguments laid out by chunks of classes for the loops of ``_chunks``."""

    config: _chunks.Config
    parameters: _chunks.Parameters
    targets: _chunks.Targets
    example_weight: jax.Array  # (rows,): the weight of each example, 0 where masked
    divisor: jax.Array | None  # what the scalar reductions divide by (None for "none")


def _by_chunks(options: _Options, features, kernel, labels, positives, bias, pos_weight, weight, keep) -> _ByChunks:
    batch, classes = features.shape[:-1], kernel.shape[1]
    reduction, label_smoothing, ignore_label, chunk_size, precision, dtype, _ = options
    known = None if ignore_label is None else labels != ignore_label
    rows = math.prod(batch)
    layout = _chunks.choose_layout(classes, rows if isinstance(rows, int) else 1024, chunk_size)
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
    parameters = _chunks.Parameters(
        features=flat_features,
        kernel=_chunks.by_chunk(kernel, layout),
        bias=None if bias is None else _chunks.by_chunk(bias.astype(dtype), layout),
        pos_weight=None
        if pos_weight is None
        else _chunks.by_chunk(jnp.broadcast_to(pos_weight.astype(dtype), (classes,)), layout, fill=1),
        weight=None if element_weight is None else _chunks.by_chunk(element_weight.astype(dtype), layout),
    )
    targets = _chunks.Targets(
        labels=None if labels is None else _chunks.by_chunk(labels.reshape(rows, classes), layout),
        positives=None if positives is None else positives.reshape(rows, positives.shape[-1]),
        keep=flat_keep,
    )
    config = _chunks.Config(layout, label_smoothing, ignore_label, precision, dtype)

    example_weight = jnp.ones((), dtype) if weight is None else weight.astype(dtype)
    if keep is not None:
        example_weight = jnp.where(keep, example_weight, 0)
    example_weight = jnp.broadcast_to(example_weight, batch).reshape(rows)
    parameters = _chunks.vary_together(parameters, parameters, targets)
    divisor = None
    if reduction != "none":
        # The denominator of the materialised loss of the (..., C) logits: keep masks examples, known elements.
        element_keep = _chunks.both(None if keep is None else jnp.broadcast_to(keep, batch)[..., None], known)
        shape = (*batch, classes)
        divisor = denominator(reduction, shape, tuple(range(len(shape))), element_keep, None, dtype)
    return _ByChunks(config, parameters, targets, example_weight, divisor)


def _loss_by_chunks(options: _Options, *arrays) -> jax.Array:
    """The checked arguments laid out by chunks of classes, weighted, and reduced through the ``custom_vjp``
    loops above."""
    config, parameters, targets, example_weight, divisor = _by_chunks(options, *arrays)
    batch = arrays[0].shape[:-1]
    if options.reduction == "none":
        losses = weighted(example_weight, _row_losses(config, parameters, targets))
        return losses.reshape(batch).astype(options.out_dtype)
    row_scale = _chunks.vary_together(example_weight / divisor, parameters, targets)
    return _weighted_total(config, parameters, targets, row_scale).astype(options.out_dtype)


@jit_loss(static=("label_smoothing", "ignore_label", "reduction", "chunk_size", "precision"))
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
    options, arrays = _checked_arguments(
        features, kernel, labels, positives, bias, weight, pos_weight, label_smoothing, where, ignore_label,
        reduction, chunk_size, precision, REDUCTIONS,
    )  # fmt: skip
    rows_spec = (explicit_spec(arrays[0]) or ())[:-1] if reduction == "none" else ()
    return with_auto_axes(functools.partial(_loss_by_chunks, options), *arrays, out_spec=rows_spec)


def _checked_arguments(
    features, kernel, labels, positives, bias, weight, pos_weight, label_smoothing, where, ignore_label, reduction,
    chunk_size, precision, reductions,
) -> tuple[_Options, tuple]:  # fmt: skip
    """The fused losses' arguments checked (and the value checks registered): the static options and the arrays
    ``(features, kernel, labels, positives, bias, pos_weight, weight, keep)``."""
    label_smoothing = check_fraction("label_smoothing", label_smoothing)
    ignore_label = check_ignore_label(ignore_label)
    check_reduction(reduction, valid=reductions)
    check_chunk_size(chunk_size)
    features = checked_array("features", features, Role.LOGITS)
    kernel = checked_array("kernel", kernel, Role.LOGITS)
    if features.ndim < 1:
        raise ValueError("features must have shape (..., D), got a scalar")
    check_shape("kernel", kernel, (features.shape[-1], "C"), "(features.shape[-1], C)")
    batch, classes = features.shape[:-1], kernel.shape[1]
    logits_shape = (*batch, classes)
    if (labels is None) == (positives is None):
        raise ValueError("pass exactly one of labels (dense, (..., C)) and positives (sparse, (..., P))")
    if positives is not None and ignore_label is not None:
        raise ValueError("ignore_label applies to dense labels; positives list the known positive classes")
    labels = optional_array("labels", labels, Role.LABELS)
    positives = optional_array("positives", positives, Role.INDICES)
    bias = optional_array("bias", bias, Role.LOGITS)
    pos_weight = optional_array("pos_weight", pos_weight, Role.NON_NEGATIVE)
    weight = optional_array("weight", weight, Role.NON_NEGATIVE)
    check_shape("labels", labels, logits_shape, "features.shape[:-1] + (C,)")
    check_shape("positives", positives, (*batch, "P"), "features.shape[:-1] + (P,)")
    check_shape("bias", bias, (classes,), "(C,)")
    if pos_weight is not None:
        check_broadcasts("pos_weight", pos_weight.shape, (classes,), "the classes (C,)")
    if weight is not None:
        _check_weight(weight, batch, classes)
    keep = None if where is None else as_mask(where, batch, "features.shape[:-1]")
    out_dtype = jnp.result_type(features.dtype, kernel.dtype)
    dtype = compute_dtype(out_dtype)

    if value_checks_enabled():
        example_keep = None if keep is None else keep[..., None]
        known = None if ignore_label is None else labels != ignore_label
        register_value_checks("features", Role.LOGITS, features, example_keep)
        register_value_checks("labels", Role.LABELS, labels, _chunks.both(example_keep, known))
        register_value_checks("weight", Role.NON_NEGATIVE, weight, example_keep)
        register_value_checks("pos_weight", Role.NON_NEGATIVE, pos_weight, None)
        if positives is not None:
            ok = (positives >= -1) & (positives < classes)
            ok = ok if keep is None else ok | ~keep[..., None]
            check_values("positives", positives, ok, f"must be class indices in [-1, {classes}) (-1: padding)")

    options = _Options(reduction, label_smoothing, ignore_label, chunk_size, precision, dtype, out_dtype)
    return options, (features, kernel, labels, positives, bias, pos_weight, weight, keep)


# The primitives of an elementwise update: each output element is a function of the same element of its array
# operands (and of scalars). An optimizer's update made only of these (and of anything on scalars: counts,
# schedules) can be applied to one chunk of classes at a time.
_ELEMENTWISE = frozenset({
    "abs", "add", "and", "atan2", "cbrt", "ceil", "clamp", "convert_element_type", "copy", "copy_p", "cos", "cosh",
    "div", "eq", "erf", "erf_inv", "exp", "exp2", "expm1", "floor", "ge", "gt", "imag", "integer_pow", "is_finite",
    "le", "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or", "pow",
    "real", "reduce_precision", "rem", "round", "rsqrt", "select_n", "sign", "sin", "sinh", "sqrt", "square",
    "stop_gradient", "sub", "tan", "tanh", "xor",
})  # fmt: skip


def _sub_jaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def _not_elementwise(jaxpr) -> str | None:
    """What in ``jaxpr`` reads more than one element of an array to form an element, or None."""
    for eqn in jaxpr.eqns:
        operands = [getattr(v.aval, "shape", ()) for v in eqn.invars]
        results = [getattr(v.aval, "shape", ()) for v in eqn.outvars]
        if all(shape == () for shape in (*operands, *results)):
            continue  # scalars: the step count, a schedule
        inner = list(_sub_jaxprs(eqn.params))
        if inner:
            found = next((what for what in map(_not_elementwise, inner) if what), None)
            if found:
                return found
            continue
        name = eqn.primitive.name
        if name == "broadcast_in_dim" and operands[0] == ():
            continue
        if name in _ELEMENTWISE and all(shape in ((), results[0]) for shape in operands):
            continue
        return f"{name} on arrays of shapes {', '.join(str(s) for s in operands)}"
    return None


def _check_elementwise(optimizer, params: dict, opt_state) -> None:
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (params, opt_state, params))
    try:
        program = jax.make_jaxpr(optimizer.update)(*abstract)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"linear_binary_cross_entropy_update(): optimizer.update fails on params and opt_state ({error}); pass "
            "opt_state = optimizer.init(params)"
        ) from error
    found = _not_elementwise(program.jaxpr)
    if found:
        raise TypeError(
            f"linear_binary_cross_entropy_update(): the optimizer's update is not elementwise (it applies {found}). "
            "The fused update applies it to one chunk of classes at a time, so each parameter's update may depend "
            "only on its own gradient, state and value, and on scalars such as the step count: global-norm "
            "clipping, factored second moments (Adafactor) and other updates that read the whole gradient cannot "
            "be fused. Use jax.grad of linear_binary_cross_entropy and optimizer.update for those."
        )


def _chunked_leaves(opt_state, kernel: jax.Array, bias: jax.Array | None) -> list[bool]:
    """For each leaf of the optimizer state, whether it is a per-parameter array (the shape of the kernel or of
    the bias: laid out by chunks) rather than a scalar (the step count, a schedule's state: read whole)."""
    chunked = []
    for leaf in jax.tree.leaves(opt_state):
        shape = np.shape(leaf)
        if shape not in ((), kernel.shape, *([] if bias is None else [bias.shape])):
            raise TypeError(
                f"linear_binary_cross_entropy_update(): opt_state holds an array of shape {shape}, neither a "
                f"scalar nor of the shape of a parameter (kernel {kernel.shape}, bias "
                f"{None if bias is None else bias.shape}): pass optimizer.init(params) of an elementwise optimizer"
            )
        chunked.append(shape != ())
    return chunked


def _chunk_update(optimizer, opt_state, chunked: list[bool], key: jax.Array | None):
    """The update loop's ``update``: ``optimizer.update`` of chunk ``j``'s gradients, state and parameters, and
    ``optax.apply_updates``; the scalar state (the step count, schedules) is read from ``opt_state`` as given at
    every chunk, so that it advances once per call.

    Without ``key`` the update is Optax's: the gradients in the parameters' dtypes, each result in its own. With
    ``key`` every 16-bit floating parameter and state array is widened to float32, updated with the float32
    gradient, and rounded back stochastically with random numbers from ``fold_in(key, j)``."""
    state_tree = jax.tree.structure(opt_state)
    scalars = jax.tree.leaves(opt_state)

    def update(j, kernel_gradient, bias_gradient, old: _chunks.Head) -> _chunks.Head:
        chunk = {"kernel": old.kernel}
        gradients = {"kernel": kernel_gradient}
        if old.bias is not None:
            chunk["bias"], gradients["bias"] = old.bias, bias_gradient
        state = [
            leaf if by_chunks else initial for leaf, initial, by_chunks in zip(old.rest, scalars, chunked, strict=True)
        ]
        stored = jax.tree.leaves((chunk, state))
        if key is None:
            gradients = {name: gradient.astype(chunk[name].dtype) for name, gradient in gradients.items()}
        else:
            chunk, state = jax.tree.map(_widened, (chunk, state))
        updates, state = optimizer.update(gradients, jax.tree.unflatten(state_tree, state), chunk)
        new = {name: chunk[name] + updates[name] for name in chunk}  # optax.apply_updates
        keys = [None] * len(stored) if key is None else jax.random.split(jax.random.fold_in(key, j), len(stored))
        written = [
            _narrowed(value, like.dtype, leaf_key)
            for value, like, leaf_key in zip(jax.tree.leaves((new, state)), stored, keys, strict=True)
        ]
        new, state = jax.tree.unflatten(jax.tree.structure((new, state)), written)
        return _chunks.Head(new["kernel"], new.get("bias"), jax.tree.leaves(state))

    return update


def _is_16_bit_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2


def _widened(array: jax.Array) -> jax.Array:
    return array.astype(jnp.float32) if _is_16_bit_float(array.dtype) else array


def _narrowed(value: jax.Array, dtype, key: jax.Array | None) -> jax.Array:
    """``value`` in ``dtype``: rounded stochastically where ``key`` is given and ``dtype`` is a 16-bit float."""
    if key is None or not _is_16_bit_float(dtype):
        return value.astype(dtype)
    return round_stochastically(value, dtype, key)


def _one_key(name: str, key: jax.Array) -> jax.Array:
    """``key`` as a typed key array of shape ``()``: one ``jax.random.key(seed)``, or a raw
    ``jax.random.PRNGKey(seed)`` of the default implementation."""
    key = key if isinstance(key, jax.Array) else jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
        return key
    if key.dtype == jnp.uint32 and key.shape == jax.random.key_data(jax.random.key(0)).shape:
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"{name}: key must be one PRNG key, jax.random.key(seed) (or a raw jax.random.PRNGKey(seed)), got "
        f"{key.dtype} of shape {key.shape}"
    )


def _update_by_chunks(options: _Options, optimizer, chunked: list[bool], params: dict, opt_state, key, *arrays):
    features, bias = arrays[0], arrays[4]
    config, parameters, targets, example_weight, divisor = _by_chunks(options, *arrays)
    layout = config.layout
    head = _chunks.Head(
        _chunks.by_chunk(params["kernel"], layout),
        None if bias is None else _chunks.by_chunk(params["bias"], layout),
        [
            _chunks.by_chunk(leaf, layout) if by_chunks else leaf
            for leaf, by_chunks in zip(jax.tree.leaves(opt_state), chunked, strict=True)
        ],
    )
    row_scale = example_weight / divisor
    update = _chunk_update(optimizer, opt_state, chunked, key)
    rows, features_grad, head = _chunks.row_losses_and_updates(
        config, parameters, targets, row_scale, head, chunked, update
    )
    new_params = {"kernel": _chunks.from_chunks(head.kernel, layout)}
    if head.bias is not None:
        new_params["bias"] = _chunks.from_chunks(head.bias, layout)
    new_state = [
        _chunks.from_chunks(leaf, layout) if by_chunks else leaf
        for leaf, by_chunks in zip(head.rest, chunked, strict=True)
    ]
    loss = _weighted_sum(row_scale, rows).astype(options.out_dtype)
    features_grad = features_grad.reshape(features.shape).astype(features.dtype)
    return loss, features_grad, new_params, jax.tree.unflatten(jax.tree.structure(opt_state), new_state)


@jit_loss(
    static=("optimizer", "label_smoothing", "ignore_label", "reduction", "chunk_size", "precision"),
    trees=("params", "opt_state"),
)
def linear_binary_cross_entropy_update(
    features: jax.typing.ArrayLike,
    params: dict[str, jax.typing.ArrayLike],
    opt_state: Any,
    labels: jax.typing.ArrayLike | None = None,
    *,
    positives: jax.typing.ArrayLike | None = None,
    optimizer: Any,
    weight: jax.typing.ArrayLike | None = None,
    pos_weight: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    precision: jax.lax.PrecisionLike = None,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], Any]:
    """One optimizer step of the classifier ``features @ kernel + bias`` fused into the loss's chunk loop: no
    gradient of the kernel's size ever exists.

    For each chunk of classes the loop forms the logits, the loss, and the chunk's gradients in the kernel and
    the bias (as :func:`linear_binary_cross_entropy` does), applies ``optimizer.update`` to that chunk's
    gradients, state and parameters, and writes the new parameters and state over the chunk's old ones. The
    rest of the model gets the loss and its gradient in ``features``, for the ``vjp`` of the layers below:

        loss, features_grad, params, opt_state = linear_binary_cross_entropy_update(
            features, params, opt_state, labels, optimizer=optimizer)
        body_grads = body_vjp(features_grad)

    What is held beyond the arguments and the results is the chunk's arrays (``rows x chunk``): with the step
    jitted and ``params`` and ``opt_state`` donated (``jax.jit(step, donate_argnums=...)``) the kernel and the
    optimizer state are updated in place, and a step takes the memory of the parameters, their state and one
    chunk, where the fused loss followed by ``optimizer.update`` also holds the kernel's gradient and the
    updates (``bench/fused.py`` measures both). That takes XLA's in-place loop writes, which jaxlib 0.7.0 does
    not give: there each updated array is copied once per step (still no kernel-sized gradient).

    Sharding: with the kernel, the bias and the state sharded over classes (Explicit or Auto axes), each device
    updates its own columns and every result keeps its argument's sharding. Inside ``shard_map`` with the
    classes split, each shard's loss and ``features_grad`` are those of its classes: use ``reduction="sum"``
    (a mean would divide by the local classes) and ``psum`` the two over the class axis (tests/test_update.py).

    A 16-bit classifier. Without ``key``, bfloat16 or float16 parameters are updated in their own dtype, as
    ``optax.apply_updates`` does; then an update below half a weight's spacing (2^-9 of it in bfloat16) is lost,
    and a 16-bit Adam second moment never moves. With ``key`` (ELMO's recipe, ICML 2025), every 16-bit parameter
    and optimizer-state array is widened to float32 for the update, which is applied to the float32 gradient,
    and rounded back *stochastically*: to the neighbour below or above with probabilities that make the expected
    result the float32 one. The kernel and Adam's moments can then all be 16-bit, 6 bytes per weight where
    float32 takes 12 (bfloat16 for Adam: float16's range cannot hold the small second moments of rare classes,
    and such a head diverged in examples/extreme_multilabel.py). Pass a new key at every step
    (``jax.random.fold_in(key, step)``); inside ``shard_map`` also fold in ``jax.lax.axis_index`` of the class
    axis, or every shard rounds with the same numbers. float32 parameters are not rounded: there ``key`` changes
    nothing. On the CPU, two costs: the random numbers take about as long as a matmul per rounded array
    (``jax.random.key(seed, impl="rbg")`` halves that), and XLA:CPU cannot write bfloat16 in place in a loop, so
    most bfloat16 arrays are copied once per step (float16 ones are not; tests/test_update.py measures both).

    Args:
      features: ``(..., D)`` float16, bfloat16, float32 or float64: the last hidden layer.
      params: ``{"kernel": (D, C), "bias": (C,)}`` (the bias optional), Flax ``Dense``'s names.
      opt_state: ``optimizer.init(params)``.
      labels: dense labels ``(..., C)``, or None with ``positives``, as for :func:`linear_binary_cross_entropy`.
      positives: sparse labels ``(..., P)``, class indices padded with ``-1``.
      optimizer: static Optax ``GradientTransformation`` whose update is elementwise: each parameter's update
        depends only on its own gradient, state and value and on scalars (the step count, a schedule): SGD,
        momentum, Adam, AdamW, Lion, RMSProp and chains of them, with schedules and elementwise clipping. One
        that reads the whole gradient (global-norm clipping, Adafactor's factored moments) is a ``TypeError``
        naming the operation, found by reading its update's program.
      weight: optional non-negative weight broadcastable to the logits' shape, as for
        :func:`linear_binary_cross_entropy`.
      pos_weight: optional non-negative weight of the positive term, a scalar or ``(C,)``.
      label_smoothing: static float ``s`` in [0, 1]; labels become ``y * (1 - s) + s / 2``.
      where: optional per-example bool mask broadcastable to ``features.shape[:-1]``.
      ignore_label: static label value to ignore in dense ``labels``, or None.
      chunk_size: static number of classes per chunk, or None to choose it from the shapes.
      precision: static ``jax.lax.Precision`` of the matmuls.
      reduction: ``"sum"``, ``"mean"`` (default) or ``"batchmean"``: the step needs a scalar loss.
      key: optional PRNG key (``jax.random.key``, or a raw ``jax.random.PRNGKey``): round 16-bit parameters and
        state stochastically, as above. None (default): Optax's update in the parameters' dtypes.

    Returns:
      ``(loss, features_grad, params, opt_state)``: the loss and its gradient in ``features`` equal the value
      and ``features`` gradient of :func:`linear_binary_cross_entropy` with the same arguments, and ``params``
      and ``opt_state`` those of ``optax.apply_updates(params, updates)`` and ``optimizer.update(grads,
      opt_state, params)`` for its gradient ``grads`` (to float32 rounding; tests/test_update.py). Scalar state
      (Adam's count, a schedule's step) advances once per call. The parameters and state keep their dtypes;
      with ``key`` their 16-bit arrays are the float32 step's rounded stochastically.

    Raises:
      TypeError: an optimizer whose update is not elementwise; an ``opt_state`` leaf that is neither a scalar
        nor shaped like a parameter; a ``key`` that is not one PRNG key; the argument errors of
        :func:`linear_binary_cross_entropy`.
      ValueError: ``params`` without ``"kernel"`` or with other keys; ``reduction="none"``; the argument errors
        of :func:`linear_binary_cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxbce, optax
      >>> features = jnp.array([[1.0, -2.0], [0.5, 0.0]])
      >>> params = {"kernel": jnp.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]), "bias": jnp.zeros(3)}
      >>> optimizer = optax.sgd(0.5)
      >>> labels = jnp.array([[1, 0, 0], [0, 1, 1]])
      >>> loss, features_grad, params, opt_state = jaxbce.linear_binary_cross_entropy_update(
      ...     features, params, optimizer.init(params), labels, optimizer=optimizer)
      >>> loss
      Array(0.6109767, dtype=float32)
      >>> jaxbce.linear_binary_cross_entropy(features, params["kernel"], labels, bias=params["bias"])
      Array(0.5873575, dtype=float32)
    """
    name = "linear_binary_cross_entropy_update()"
    if reduction not in ("sum", "mean", "batchmean"):
        raise ValueError(
            f"{name}: reduction must be 'sum', 'mean' or 'batchmean' for an update (a scalar loss), got {reduction!r}"
        )
    if not isinstance(params, dict) or "kernel" not in params or set(params) - {"kernel", "bias"}:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f'{name}: params must be {{"kernel": (D, C), "bias": (C,)}} (bias optional), got {keys}')
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(
            f"{name}: optimizer must be an Optax GradientTransformation (init and update), such as optax.adam(1e-3), "
            f"got {type(optimizer).__name__}"
        )
    kernel, bias = params["kernel"], params.get("bias")
    options, arrays = _checked_arguments(
        features, kernel, labels, positives, bias, weight, pos_weight, label_smoothing, where, ignore_label,
        reduction, chunk_size, precision, REDUCTIONS,
    )  # fmt: skip
    key = None if key is None else _one_key(name, key)
    params = {name: arrays[1] if name == "kernel" else arrays[4] for name in params}
    _check_elementwise(optimizer, params, opt_state)
    chunked = _chunked_leaves(opt_state, arrays[1], arrays[4])
    # Under Explicit axes each result keeps its argument's sharding (the loss is replicated).
    spec_of = lambda array: jax.sharding.PartitionSpec(*(explicit_spec(array) or ()))  # noqa: E731
    out_specs = (jax.sharding.PartitionSpec(), spec_of(arrays[0]), *jax.tree.map(spec_of, (params, opt_state)))
    update = functools.partial(_update_by_chunks, options, optimizer, chunked)
    return with_auto_axes(update, params, opt_state, key, *arrays, out_specs=out_specs)
