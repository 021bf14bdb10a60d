"""Binary cross-entropy fused with the last linear layer: the ``(..., C)`` logits never exist.

Why chunks, and how the classes are visited (groups, steps, the overlapping last step): ``_chunks``'s module
notes. This module is the loss's ``jax.custom_vjp`` around those loops and its public function.

Why the gradients are formed in the forward pass. A ``jax.custom_vjp`` supplies the derivatives. For a
scalar loss (``"sum"``, ``"mean"``, ``"batchmean"``) the cotangent is one number, so the forward pass of
the VJP computes each chunk's gradient at once (as Liger Kernel does): three matmuls per chunk (logits,
``d features``, ``d kernel``) instead of the four of a backward pass that recomputes the logits, and the
backward pass only scales. A primal call that is not differentiated runs the value-only loop (one matmul
per chunk). For ``reduction="none"`` the cotangent is one number per example, so the backward pass runs the
same gradient loop with those numbers as the per-example scale (four matmuls per chunk in all).
"""

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxbce import _chunks, _cores
from jaxbce._arguments import Arg, Role
from jaxbce._fused_arguments import Arrays, Options, by_chunks, checked_arguments, concrete_class_shards
from jaxbce._jit import current_function, jit_loss
from jaxbce._numerics import weighted
from jaxbce._sharding import explicit_spec, with_auto_axes


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
            f"{current_function()} does not differentiate its labels, positives or where; "
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
    every = _chunks.Parameters(features=True, kernel=True, bias=True, per_class=True, weight=True)
    _, gradients = _chunks.row_losses_and_gradients(config, parameters, targets, cotangent, every)
    return gradients, None


_row_losses.defvjp(_row_losses_fwd, _row_losses_bwd, symbolic_zeros=True)


def _loss_by_chunks(options: Options, arrays: Arrays) -> jax.Array:
    """The checked arguments laid out by chunks of classes, weighted, and reduced through the ``custom_vjp``
    loops above."""
    config, parameters, targets, example_weight, divisor = by_chunks(options, arrays)
    if options.reduction == "none":
        losses = weighted(example_weight, _row_losses(config, parameters, targets))
        return losses.reshape(arrays.features.shape[:-1]).astype(options.out_dtype)
    row_scale = _chunks.vary_together(example_weight / divisor, parameters, targets)
    return _weighted_total(config, parameters, targets, row_scale).astype(options.out_dtype)


def _fused_loss(function: str, core: _cores.Core, per_class: Arg, features, kernel, **arguments) -> jax.Array:
    """The path of every fused loss: checks, then the layout by chunks, then the loops with ``core``."""
    options, arrays = checked_arguments(function, features, kernel, core=core, per_class=per_class, **arguments)
    rows_spec = (explicit_spec(arrays.features) or ())[:-1] if options.reduction == "none" else ()
    return with_auto_axes(functools.partial(_loss_by_chunks, options), arrays, out_spec=rows_spec)


_SHARED_STATIC = ("ignore_label", "reduction", "chunk_size", "precision", "kernel_layout")


@jit_loss(static=("label_smoothing", "poly_epsilon", *_SHARED_STATIC), hint=concrete_class_shards)
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
    poly_epsilon: float = 0.0,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    precision: jax.lax.PrecisionLike = None,
    kernel_layout: str = "in_out",
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
    few arrays of ``rows x chunk``, for any ``C`` (a prime included: the last chunk may be partial, and nothing
    of the kernel's size is padded or copied) and either kernel layout (nothing is transposed).

    Args:
      features: ``(..., D)`` float16, bfloat16, float32 or float64: the last hidden layer.
      kernel: ``(D, C)`` real floating, the Flax ``Dense``/``Linear`` layout, or ``(C, D)`` with
        ``kernel_layout="out_in"``.
      labels: dense labels ``(..., C)`` in [0, 1] (floating, integer or bool; soft labels allowed), or a
        ``jax.experimental.sparse.BCOO`` of shape ``(..., C)`` (``BCOO.from_scipy_sparse`` of a CSR matrix;
        binary or soft values; duplicate entries add up, as BCOO defines, and a sum outside [0, 1] is reported
        by the value checks), equal to the dense labels it holds and never densified: each chunk scatters the
        entries that fall in it. Exactly one of ``labels`` and ``positives``.
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
      poly_epsilon: static float ``eps``: Poly-1 adds ``eps * (1 - p_t)`` per element, as
        :func:`binary_cross_entropy_with_logits` does (the same core).
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
      chunk_size: static number of classes per chunk: the chunk used (the last one may overlap the one
        before it, its repeated classes masked; a ``chunk_size`` above ``C`` is one chunk). None picks it from
        the shapes: about 2^21 logits per chunk, at least 256 classes, the chunks as equal as ``C`` allows.
        Every chunk takes the same number of classes from each shard of a kernel sharded over classes, so on
        several devices it must be a multiple of the class shards (read from the kernel's type under Explicit
        axes; under Auto axes, where the sharding is chosen after tracing, of ``gcd(C, devices)``): another
        is a ``ValueError`` that names the sizes that work.
      precision: static ``jax.lax.Precision`` of the matmuls (forward and backward), as for ``jnp.dot``.
      kernel_layout: static ``"in_out"`` (default: ``kernel`` is ``(D, C)``, Flax ``nnx.Linear``,
        ``linen.Dense``, Haiku) or ``"out_in"`` (``kernel`` is ``(C, D)``: Equinox ``eqx.nn.Linear.weight``,
        PyTorch ``nn.Linear.weight``), read in place: no transposed copy.

    Returns:
      The loss in the promoted dtype of ``features`` and ``kernel``: a scalar, or ``features.shape[:-1]`` for
      ``"none"``. It is computed in float32 and rounded to that dtype, so bfloat16 features with a bfloat16
      kernel give a bfloat16 loss (three significant digits: 75.88 comes back as 76.0); for a loss to log, pass
      float32 features (the matmuls then promote, and the kernel stays bfloat16).

    Gradients: reverse mode (``jax.grad``, ``jax.vjp``) in ``features``, ``kernel``, ``bias``, ``pos_weight``
    and ``weight``, equal to the materialised computation's to float32 summation-order rounding; they are
    formed chunk by chunk (for the scalar reductions in the forward pass of the VJP: three matmuls per chunk
    with ``features`` and ``kernel`` differentiated, two with one of them, one with neither). ``labels``,
    ``positives`` and ``where`` are data: differentiating with respect to them is a ``ValueError``. Tested
    against the materialised loss for every subset of the differentiable arguments, called several times in
    one objective with different subsets or under ``stop_gradient``, and under ``jit``, ``vmap`` (grad of vmap
    and vmap of grad), ``lax.scan``, ``fori_loop``, ``cond``, ``switch`` and ``jax.checkpoint`` (every policy).
    Second derivatives work as reverse-over-reverse and forward-over-reverse
    (``jax.hessian``); they differentiate the chunk loop itself and so hold ``rows x C`` numbers, as the
    materialised loss does. Forward mode alone (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) is not supported
    (a ``jax.custom_vjp``; JAX raises a ``TypeError``).

    Raises:
      TypeError: a floating argument of another dtype, integer-free ``positives``, non-bool ``where``.
      ValueError: both or neither of ``labels`` and ``positives``; ``kernel`` not ``(D, C)`` (``(C, D)`` for
        ``"out_in"``) for the ``D`` of ``features``; ``labels`` not ``(..., C)``; ``bias``, ``pos_weight``,
        ``weight`` or ``where`` of a wrong shape; unknown ``reduction`` or ``kernel_layout``; bad
        ``chunk_size`` (not a positive int, or not a multiple of the class shards) or ``label_smoothing``.

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
    return _fused_loss(
        "linear_binary_cross_entropy()", _cores.bce(label_smoothing, poly_epsilon),
        Arg("pos_weight", pos_weight, Role.NON_NEGATIVE), features, kernel, labels=labels, positives=positives,
        bias=bias, weight=weight, where=where, ignore_label=ignore_label, reduction=reduction, chunk_size=chunk_size,
        precision=precision, kernel_layout=kernel_layout,
    )  # fmt: skip


@jit_loss(
    static=("gamma", "label_smoothing", "poly_epsilon", *_SHARED_STATIC),
    static_or_array=("alpha",),
    hint=concrete_class_shards,
)
def linear_sigmoid_focal_loss(
    features: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike | None = None,
    *,
    positives: jax.typing.ArrayLike | None = None,
    bias: jax.typing.ArrayLike | None = None,
    alpha: float | jax.typing.ArrayLike | None = 0.25,
    gamma: float = 2.0,
    weight: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
    poly_epsilon: float = 0.0,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    precision: jax.lax.PrecisionLike = None,
    kernel_layout: str = "in_out",
) -> jax.Array:
    """The sigmoid focal loss of the logits ``features @ kernel + bias``, without ever forming them.

    Equal to ``sigmoid_focal_loss(features @ kernel + bias, dense_labels, ...)`` summed over classes, computed
    over chunks of classes as :func:`linear_binary_cross_entropy` computes the BCE, with the focal loss's own
    core and derivative rules (double-word ``(1 - p_t)**gamma``, exact to rounding where ``1 - p_t`` is tiny):

        loss[n] = sum_c w[n, c] * alpha_t * (1 - p_t)**gamma * bce(z[n, c], y[n, c]) + eps * (1 - p_t)**(gamma + 1)
        z = features @ kernel + bias

    Args:
      features: as for :func:`linear_binary_cross_entropy`.
      kernel: as for :func:`linear_binary_cross_entropy`.
      labels: as for :func:`linear_binary_cross_entropy`.
      positives: as for :func:`linear_binary_cross_entropy`.
      bias: as for :func:`linear_binary_cross_entropy`.
      weight: as for :func:`linear_binary_cross_entropy`.
      label_smoothing: as for :func:`linear_binary_cross_entropy`.
      where: as for :func:`linear_binary_cross_entropy`.
      ignore_label: as for :func:`linear_binary_cross_entropy`.
      reduction: as for :func:`linear_binary_cross_entropy`.
      chunk_size: as for :func:`linear_binary_cross_entropy`.
      precision: as for :func:`linear_binary_cross_entropy`.
      kernel_layout: as for :func:`linear_binary_cross_entropy`.
      alpha: weight of the positive class in [0, 1], or None for no ``alpha_t``: a Python float is static; an
        array broadcastable to ``(C,)`` (per class) is traced and differentiable, its range checked under
        :func:`jaxbce.checked`.
      gamma: static focusing parameter ``>= 0`` (0 with ``alpha=None`` is the BCE).
      poly_epsilon: static float ``eps``: Poly-1's ``eps * (1 - p_t)**(gamma + 1)``, not scaled by ``alpha_t``.

    Returns:
      As for :func:`linear_binary_cross_entropy`.

    Gradients: as for :func:`linear_binary_cross_entropy`, in ``features``, ``kernel``, ``bias``, ``weight`` and
    an array ``alpha``.

    Raises:
      TypeError, ValueError: as for :func:`linear_binary_cross_entropy`, and for ``alpha`` outside [0, 1] or a
        negative ``gamma``.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> features = jnp.array([[1.0, -2.0], [0.5, 0.0]])
      >>> kernel = jnp.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
      >>> positives = jnp.array([[0, -1], [2, 1]])
      >>> jaxbce.linear_sigmoid_focal_loss(features, kernel, positives=positives, reduction="sum")
      Array(0.48105296, dtype=float32)
      >>> jaxbce.sigmoid_focal_loss(features @ kernel, jnp.array([[1, 0, 0], [0, 1, 1]]), reduction="sum")
      Array(0.48105296, dtype=float32)
    """
    _cores.check_alpha(alpha)
    return _fused_loss(
        "linear_sigmoid_focal_loss()", _cores.sigmoid_focal(gamma, label_smoothing, poly_epsilon),
        Arg("alpha", alpha, Role.FRACTION), features, kernel, labels=labels, positives=positives, bias=bias,
        weight=weight, where=where, ignore_label=ignore_label, reduction=reduction, chunk_size=chunk_size,
        precision=precision, kernel_layout=kernel_layout,
    )  # fmt: skip


@jit_loss(
    static=("gamma_pos", "gamma_neg", "clip", "stop_focusing_gradient", *_SHARED_STATIC), hint=concrete_class_shards
)
def linear_asymmetric_loss(
    features: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike | None = None,
    *,
    positives: jax.typing.ArrayLike | None = None,
    bias: jax.typing.ArrayLike | None = None,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    weight: jax.typing.ArrayLike | None = None,
    pos_weight: jax.typing.ArrayLike | None = None,
    stop_focusing_gradient: bool = False,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    precision: jax.lax.PrecisionLike = None,
    kernel_layout: str = "in_out",
) -> jax.Array:
    """The asymmetric loss (ASL, Ridnik et al.) of the logits ``features @ kernel + bias``, without ever forming
    them.

    Equal to ``asymmetric_loss(features @ kernel + bias, dense_labels, ...)`` summed over classes, computed over
    chunks of classes as :func:`linear_binary_cross_entropy` computes the BCE, with the asymmetric loss's own
    core and derivative rules (no probability clamp; ``p - clip`` formed without cancellation):

        loss[n] = sum_c w * (pw y (1 - p)**gamma_pos softplus(-z) + (1 - y) p_m**gamma_neg (-log(1 - p_m)))
        p = sigmoid(z), p_m = max(p - clip, 0), z = features @ kernel + bias

    Args:
      features: as for :func:`linear_binary_cross_entropy`.
      kernel: as for :func:`linear_binary_cross_entropy`.
      labels: as for :func:`linear_binary_cross_entropy`.
      positives: as for :func:`linear_binary_cross_entropy`.
      bias: as for :func:`linear_binary_cross_entropy`.
      weight: as for :func:`linear_binary_cross_entropy`.
      pos_weight: as for :func:`linear_binary_cross_entropy`.
      where: as for :func:`linear_binary_cross_entropy`.
      ignore_label: as for :func:`linear_binary_cross_entropy`.
      reduction: as for :func:`linear_binary_cross_entropy`.
      chunk_size: as for :func:`linear_binary_cross_entropy`.
      precision: as for :func:`linear_binary_cross_entropy`.
      kernel_layout: as for :func:`linear_binary_cross_entropy`.
      gamma_pos: static, as for :func:`asymmetric_loss` (the paper's defaults for the four).
      gamma_neg: static, as for :func:`asymmetric_loss`.
      clip: static, as for :func:`asymmetric_loss`.
      stop_focusing_gradient: static, as for :func:`asymmetric_loss`.

    Returns:
      As for :func:`linear_binary_cross_entropy`.

    Gradients: as for :func:`linear_binary_cross_entropy`, in ``features``, ``kernel``, ``bias``, ``weight`` and
    ``pos_weight``.

    Raises:
      TypeError, ValueError: as for :func:`linear_binary_cross_entropy`, and as :func:`asymmetric_loss` for its
        options.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> features = jnp.array([[1.0, -2.0], [0.5, 0.0]])
      >>> kernel = jnp.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
      >>> positives = jnp.array([[0, -1], [2, 1]])
      >>> jaxbce.linear_asymmetric_loss(features, kernel, positives=positives, reduction="sum")
      Array(2.452192, dtype=float32)
      >>> jaxbce.asymmetric_loss(features @ kernel, jnp.array([[1, 0, 0], [0, 1, 1]]), reduction="sum")
      Array(2.452192, dtype=float32)
    """
    return _fused_loss(
        "linear_asymmetric_loss()", _cores.asymmetric(gamma_pos, gamma_neg, clip, stop_focusing_gradient),
        Arg("pos_weight", pos_weight, Role.NON_NEGATIVE), features, kernel, labels=labels, positives=positives,
        bias=bias, weight=weight, where=where, ignore_label=ignore_label, reduction=reduction, chunk_size=chunk_size,
        precision=precision, kernel_layout=kernel_layout,
    )  # fmt: skip
