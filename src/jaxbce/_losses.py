"""The public elementwise losses. Each declares its static options to the registry (:func:`jaxbce._registry.loss`)
and its body is the path from its arguments to its value: check the static options, pick the elementwise core
(a :class:`jaxbce._reductions.Terms`), and hand the arrays with their roles and the shared arguments to
:func:`jaxbce._pipeline.compute_loss`.

Shared semantics (the contract: ``docs/contract.md``):

* ``labels`` (and ``target_logits``) must have exactly the shape of the first argument; ``weight``,
  ``pos_weight`` and ``where`` must broadcast to it. Violations are errors at trace time.
* The first argument must be float16, bfloat16, float32 or float64. 16-bit inputs are computed and reduced in
  float32 and the result is cast back to the input dtype; float64 inputs are computed in float64. Labels may
  be floating, integer or bool and are cast inside the computation.
* ``reduction``: ``"none"`` (elementwise, 0 where masked), ``"sum"``, ``"mean"`` (sum / number of kept
  elements; weights do not change the count) or ``"weighted_mean"`` (sum / sum of kept weights; the same as
  ``"mean"`` without ``weight``). A mean over nothing is 0 with zero gradient. ``axis`` (None for all, an int
  or a tuple) says which axes are reduced; it must be None with ``"none"``.
* ``where=False`` removes an element from the value and from every gradient, whatever it holds (NaN, inf).
* A zero ``weight`` removes its element even where the loss is infinite (0 * inf is taken as 0).
* ``label_smoothing``, ``gamma``, ``clip`` and a float ``alpha`` are static Python floats (one compilation per
  value).
"""

import functools

import jax
import jax.numpy as jnp

from jaxbce import _cores, _elementwise
from jaxbce._arguments import Arg, Role, check_fraction
from jaxbce._pipeline import compute_loss
from jaxbce._reductions import Terms
from jaxbce._registry import loss


@loss(static=("label_smoothing", "poly_epsilon"))
def binary_cross_entropy_with_logits(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    weight: jax.typing.ArrayLike | None = None,
    pos_weight: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
    poly_epsilon: float = 0.0,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    axis: int | tuple[int, ...] | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Binary cross-entropy from logits, exact to rounding everywhere, with exact derivatives of every order.

    Per element, with ``x = logits``, ``y = labels`` (after smoothing) and ``pw = pos_weight``:

        loss = w * (pw * y * softplus(-x) + (1 - y) * softplus(x))

    which is ``-w * (pw * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x)))`` without ever forming
    ``sigmoid(x)``. It is evaluated as ``a * |x| + c * softplus(-|x|)`` with non-negative ``a`` and ``c``, so no
    term cancels another, and its ``custom_jvp`` rule gives the gradient ``sigmoid(x) - y`` (for ``pw = 1``) in a
    form that stays exact where ``sigmoid(x)`` rounds to 1. Within 1.5 eps of a 50-digit reference for every
    finite logit (value and logits gradient for hard labels), and ``d/dx = 0.5 - y``, ``d2/dx2 = 0.25`` at 0.
    On CPU, large float32 reductions sum a select-free form of the same terms, within the same bounds, which XLA
    fuses into one pass over the inputs (the exact terms where that sum is NaN or tiny); its derivatives are the
    exact core's ("Sums on CPU" in the numerics docs; timings in the benchmarks).

    Args:
      logits: float16, bfloat16, float32 or float64 array of any shape ``S``.
      labels: array of shape exactly ``S`` (floating, integer or bool), values in [0, 1]; soft labels allowed.
      pos_weight: optional non-negative weight of the positive term broadcastable to ``S`` (PyTorch's
        ``pos_weight``; a shape ``(C,)`` applies per class along the last axis). ``pw > 1`` raises recall.
      label_smoothing: static float ``s`` in [0, 1]; labels become ``y * (1 - s) + s / 2`` (Keras).
      poly_epsilon: static float ``eps``: Poly-1 (Leng et al., ICLR 2022) adds ``eps * (1 - p_t)`` with
        ``1 - p_t = y_s sigmoid(-x) + (1 - y_s) sigmoid(x)``, unweighted by ``pos_weight``, formed in double-word
        arithmetic and exact to rounding where it is tiny. For ``eps >= 0`` the sum of the two non-negative
        terms stays within 2 eps of the exact value (except where both terms are subnormal and their sum is not:
        XLA flushes the terms); for ``eps < 0`` it cancels where ``p_t -> 1`` (Poly-1's ``eps = -1`` leaves
        ``-log(p_t) - (1 - p_t) ~ (1 - p_t)**2 / 2``), and the error is relative to the terms.

    Returns:
      The loss in the dtype of ``logits``: shape ``S`` for ``"none"``, else ``S`` without the reduced axes.

    Raises:
      TypeError: ``logits`` not real floating, ``labels``/``weight``/``pos_weight``/``where`` of a wrong kind.
      ValueError: ``labels`` shape differs from ``logits``; ``weight``, ``pos_weight`` or ``where`` does not
        broadcast to it; unknown ``reduction``; bad ``axis``; ``label_smoothing`` outside [0, 1].

    Values of ``labels``, ``weight`` and ``pos_weight`` (range, NaN) are checked only under
    ``jax.experimental.checkify`` (see :func:`jaxbce.checked`).

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> logits = jnp.array([[2.0, -1.0], [0.5, 30.0]])
      >>> labels = jnp.array([[1, 0], [0, 1]])
      >>> jaxbce.binary_cross_entropy_with_logits(logits, labels, pos_weight=jnp.array([3.0, 1.0]))
      Array(0.41703066, dtype=float32)
      >>> partial = jnp.array([[1, -1], [0, 1]])  # -1: unknown label
      >>> jaxbce.binary_cross_entropy_with_logits(logits, partial, ignore_label=-1, reduction="batchmean")
      Array(0.5505025, dtype=float32)
      >>> jaxbce.binary_cross_entropy_with_logits(logits, labels, poly_epsilon=1.0)  # Poly-1
      Array(0.6062176, dtype=float32)
    """
    core = _cores.bce(label_smoothing, poly_epsilon)
    if poly_epsilon:
        terms = Terms(core)
    else:
        terms = Terms(core, functools.partial(_elementwise.bce_with_logits_fusible, label_smoothing=label_smoothing))
    arrays = [
        Arg("logits", logits, Role.LOGITS),
        Arg("labels", labels, Role.LABELS),
        Arg("pos_weight", pos_weight, Role.NON_NEGATIVE),
    ]
    return compute_loss(
        terms, arrays, weight=weight, where=where, ignore_label=ignore_label, axis=axis, reduction=reduction
    )


@loss(static=("label_smoothing",))
def binary_cross_entropy(
    probs: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    weight: jax.typing.ArrayLike | None = None,
    pos_weight: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    axis: int | tuple[int, ...] | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Binary cross-entropy from probabilities, with PyTorch ``BCELoss`` semantics.

        loss = -w * (pw * y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))

    Each log is clamped at -100 as PyTorch does, so ``p = 0`` with ``y = 1`` gives exactly 100 rather than
    inf. The gradient in ``probs`` is PyTorch's ``(p - y) / max(p (1 - p), 1e-12)`` (for ``pw = 1``; in general
    ``((1 - y) p - pw y (1 - p)) / max(p (1 - p), 1e-12)``), finite on all of [0, 1]; by design it is not the
    derivative of the clamped value where a clamp is active (PyTorch's choice, kept for parity). ``pos_weight``
    is the positive-term weight of :func:`binary_cross_entropy_with_logits`, which PyTorch's ``BCELoss`` lacks
    (pytorch/pytorch#20424). ``log(1 - p)`` is taken as ``log1p(-p)`` below 0.3 and as ``log`` of the exact
    two-term ``1 - p`` above (XLA's ``log1p`` is inaccurate for arguments in [-0.5, -0.35]). On CPU, with bool or
    integer labels, large float32 reductions sum a select-free form of the same terms, within the same bounds,
    in one pass over the inputs (float labels may be soft, and keep the exact sum); its derivatives are the
    exact core's ("Sums on CPU" in the numerics docs).
    Prefer :func:`binary_cross_entropy_with_logits` whenever you have logits: it is exact where ``p`` rounds
    to 0 or 1.

    Args:
      probs: float16, bfloat16, float32 or float64 probabilities in [0, 1], of any shape ``S``.
      labels: array of shape exactly ``S`` (floating, integer or bool) in [0, 1].
      pos_weight: optional non-negative weight of the positive term broadcastable to ``S`` (a shape ``(C,)``
        applies per class along the last axis).
      label_smoothing: static float ``s`` in [0, 1]; labels become ``y * (1 - s) + s / 2``.

    Returns:
      The loss in the dtype of ``probs``.

    Probabilities outside [0, 1] give NaN (nothing is clamped); the checkify checks (:func:`jaxbce.checked`)
    report them with their index.

    Raises:
      TypeError: as for :func:`binary_cross_entropy_with_logits`.
      ValueError: as for :func:`binary_cross_entropy_with_logits`.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> jaxbce.binary_cross_entropy(jnp.array([0.9, 0.0, 0.2]), jnp.array([1.0, 1.0, 0.0]), reduction="none")
      Array([  0.10536055, 100.        ,   0.22314355], dtype=float32)
      >>> jaxbce.binary_cross_entropy(jnp.array([0.9, 0.2]), jnp.array([1.0, 0.0]), pos_weight=3.0, reduction="none")
      Array([0.31608164, 0.22314355], dtype=float32)
    """
    label_smoothing = check_fraction("label_smoothing", label_smoothing)
    core = functools.partial(_elementwise.bce_with_probabilities, label_smoothing=label_smoothing)
    if not hasattr(labels, "dtype") or jnp.issubdtype(labels.dtype, jnp.floating):
        # Only bool and integer (hard) labels get fusible terms: built on YNNPACK's log (1.5 ulp against XLA's
        # 1.05), they reach 1.72 eps for soft labels, over the contract's bound.
        terms = Terms(core)
    else:
        fusible = functools.partial(_elementwise.bce_with_probabilities_fusible, label_smoothing=label_smoothing)
        terms = Terms(core, fusible)
    arrays = [
        Arg("probs", probs, Role.PROBABILITIES),
        Arg("labels", labels, Role.LABELS),
        Arg("pos_weight", pos_weight, Role.NON_NEGATIVE),
    ]
    return compute_loss(
        terms, arrays, weight=weight, where=where, ignore_label=ignore_label, axis=axis, reduction=reduction
    )


@loss(static=("gamma", "label_smoothing", "poly_epsilon"), static_or_array=("alpha",))
def sigmoid_focal_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    alpha: float | jax.typing.ArrayLike | None = 0.25,
    gamma: float = 2.0,
    weight: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
    poly_epsilon: float = 0.0,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    axis: int | tuple[int, ...] | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Sigmoid focal loss (Lin et al., RetinaNet), torchvision semantics, stable for every logit and gamma.

        loss = w * alpha_t * (1 - p_t)**gamma * bce(x, y)
        p = sigmoid(x),  p_t = p*y + (1 - p)*(1 - y),  alpha_t = alpha*y + (1 - alpha)*(1 - y)

    ``bce`` is :func:`binary_cross_entropy_with_logits`'s exact core. In plain float32, ``1 - p_t`` comes out
    within about 1 eps and the power multiplies that by ``gamma`` (4.6 eps at ``gamma = 3``; more again for a
    fractional ``gamma``, through ``exp(gamma * log(1 - p_t))``). Here ``1 - p_t = y*sigmoid(-x) +
    (1-y)*sigmoid(x)``, its power, ``alpha_t`` and the parts of the gradient are carried as pairs of numbers
    of the compute dtype (double-word arithmetic, about twice its precision), and only the product with
    ``bce`` is rounded: loss and logits gradient stay within 2 eps of the exact values for every ``gamma``
    (docs/benchmarks.md gives the measured errors). Derivatives of second and higher order are
    those of the plain formula, written with ``d log(1 - p_t) / dx``, which is bounded, so that derivatives of
    orders 1 to 3 in the logits are finite for every ``gamma >= 0`` and every logit up to +-1e4 and beyond
    (``(1 - p_t)**gamma`` under autodiff gives NaN at ``gamma = 0`` and inf * 0 where ``1 - p_t`` is tiny).
    Derivatives in the labels are finite to third order for ``gamma = 0`` and ``gamma >= 1``; for
    ``0 < gamma < 1`` those of orders 2 and 3 at a hard label grow like ``(1 - p_t)**(gamma - 1)`` as the logit
    saturates, and beyond |x| of about 30 (float32) or 300 (float64) they overflow (inf or NaN).
    Soft labels are allowed (``p_t`` as above, as in torchvision). The default reduction is
    ``"mean"``; torchvision's is ``"none"``.

    Args:
      logits: float16, bfloat16, float32 or float64 array of any shape ``S``.
      labels: array of shape exactly ``S`` (floating, integer or bool) in [0, 1].
      alpha: weight of the positive class in [0, 1], or None to turn ``alpha_t`` off (torchvision's
        ``alpha=-1``). A Python float is static (checked when traced, one compilation per value); an array
        broadcastable to ``S`` (a per-class alpha of shape ``(C,)``) is traced and differentiable, and its range
        is checked under :func:`jaxbce.checked`.
      gamma: static focusing parameter ``>= 0``.
      label_smoothing: static float ``s`` in [0, 1], applied to the labels before ``p_t`` and ``alpha_t`` (Keras
        ``BinaryFocalCrossentropy(apply_class_balancing=True)`` does the same).
      poly_epsilon: static float ``eps``: Poly-1 adds ``eps * (1 - p_t)**(gamma + 1)`` (not scaled by
        ``alpha_t``, as in Leng et al.), its power formed in double-word arithmetic as the focal factor is.
        Accuracy as for :func:`binary_cross_entropy_with_logits`'s ``poly_epsilon``.

    Returns:
      The loss in the dtype of ``logits``.

    Raises:
      TypeError: as for :func:`binary_cross_entropy_with_logits`.
      ValueError: as for :func:`binary_cross_entropy_with_logits`, and for ``alpha`` outside [0, 1] or a
        negative ``gamma``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxbce
      >>> jax.grad(jaxbce.sigmoid_focal_loss)(jnp.array([1000.0, -3.0]), jnp.array([0.0, 1.0]), gamma=0.0)
      Array([ 0.375     , -0.11907177], dtype=float32)
    """
    _cores.check_alpha(alpha)  # static (jit_loss): checked now; an array, by checkify
    terms = Terms(_cores.sigmoid_focal(gamma, label_smoothing, poly_epsilon))
    arrays = [
        Arg("logits", logits, Role.LOGITS),
        Arg("labels", labels, Role.LABELS),
        Arg("alpha", alpha, Role.FRACTION),
    ]
    return compute_loss(
        terms, arrays, weight=weight, where=where, ignore_label=ignore_label, axis=axis, reduction=reduction
    )


@loss(static=("gamma_pos", "gamma_neg", "clip", "stop_focusing_gradient"))
def asymmetric_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    weight: jax.typing.ArrayLike | None = None,
    pos_weight: jax.typing.ArrayLike | None = None,
    stop_focusing_gradient: bool = False,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    axis: int | tuple[int, ...] | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Asymmetric loss (ASL, Ridnik et al., ICCV 2021) for multi-label classification, in logit space.

        loss = w * (pw * y * (1 - p)**gamma_pos * softplus(-x) + (1 - y) * p_m**gamma_neg * (-log(1 - p_m)))
        p = sigmoid(x),  p_m = max(p - clip, 0)

    Negatives are focused harder than positives (``gamma_neg > gamma_pos``) and easy negatives (``p <= clip``)
    are dropped. Soft labels mix the two terms linearly in ``y`` (the contract's choice; the reference
    implementation, timm's ``AsymmetricLossMultiLabel``, also mixes the exponents, and agrees for hard labels).
    No probability is clamped: the reference's ``log(max(p, 1e-8))`` caps its loss at 18.4 and sets its
    gradient to 0 beyond |x| of 18.4, and underflows in float16; here the positive term is the focal loss's
    exact core, and ``p - clip`` and ``-log(1 - p_m)`` are formed in double-word arithmetic where they would
    cancel (see ``_asymmetric``). Loss and logits gradient are within 2 eps of a 50-digit reference for every
    logit (docs/benchmarks.md); derivatives of orders 1 to 3 are finite. ``clip = 0`` with both
    gammas 0 is :func:`binary_cross_entropy_with_logits`. At ``p = clip`` the negative term is not smooth: its
    derivative of order ``gamma_neg + 1`` jumps there (the first derivative, for ``gamma_neg = 0``), and
    autodiff takes the one-sided value for ``x <= logit(clip)``, zero.

    Args:
      logits: float16, bfloat16, float32 or float64 array of any shape ``S``.
      labels: array of shape exactly ``S`` (floating, integer or bool) in [0, 1].
      gamma_pos: static focusing parameter ``>= 0`` of the positive term (the paper's default is 0).
      gamma_neg: static focusing parameter ``>= 0`` of the negative term (the paper's default is 4).
      clip: static probability margin in [0, 1) shifted off the negatives (the paper's default 0.05).
      pos_weight: optional non-negative weight of the positive term broadcastable to ``S``.
      stop_focusing_gradient: static bool; True differentiates the loss as if ``(1 - p)**gamma_pos`` and
        ``p_m**gamma_neg`` were constants (the reference's ``disable_torch_grad_focal_loss``): the value is
        unchanged and the gradient is the weighted cross-entropy gradient, e.g. ``-y (1 - p)**gamma_pos
        sigmoid(-x)`` for the positive term. That is not the loss's derivative, so it is not in the 2-eps bound
        (the weight is exact to rounding and each factor within 1.5 eps).

    Returns:
      The loss in the dtype of ``logits``.

    Raises:
      TypeError: as for :func:`binary_cross_entropy_with_logits`.
      ValueError: as for :func:`binary_cross_entropy_with_logits`, and for a negative gamma or ``clip`` outside
        [0, 1).

    Example:
      >>> import jax, jax.numpy as jnp, jaxbce
      >>> logits = jnp.array([[3.0, -1.0, -4.0], [0.5, 2.0, -30.0]])
      >>> labels = jnp.array([[1, 0, 0], [0, 1, 0]])
      >>> jaxbce.asymmetric_loss(logits, labels, reduction="batchmean")
      Array(0.13366808, dtype=float32)
      >>> jaxbce.asymmetric_loss(logits, labels, gamma_neg=0.0, clip=0.0, reduction="batchmean")  # plain BCE
      Array(0.74050194, dtype=float32)
      >>> jaxbce.binary_cross_entropy_with_logits(logits, labels, reduction="batchmean")
      Array(0.74050194, dtype=float32)
      >>> stopped = dict(gamma_pos=1.0, stop_focusing_gradient=True, reduction="sum")
      >>> jax.grad(lambda x: jaxbce.asymmetric_loss(x, labels, **stopped))(logits)[0]  # timm's disable_torch_grad_...
      Array([-0.00224921,  0.00057841,  0.        ], dtype=float32)
    """
    core = _cores.asymmetric(gamma_pos, gamma_neg, clip, stop_focusing_gradient)
    arrays = [
        Arg("logits", logits, Role.LOGITS),
        Arg("labels", labels, Role.LABELS),
        Arg("pos_weight", pos_weight, Role.NON_NEGATIVE),
    ]
    return compute_loss(
        Terms(core), arrays, weight=weight, where=where, ignore_label=ignore_label, axis=axis, reduction=reduction
    )


@loss()
def binary_entropy(
    logits: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
    axis: int | tuple[int, ...] | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Entropy of Bernoulli(sigmoid(x)) in nats, computed from logits.

        H(x) = -p log p - (1 - p) log(1 - p) = sigmoid(-|x|) * |x| + softplus(-|x|),   p = sigmoid(x)

    Both terms are non-negative and no probability is formed, so ``H`` is exact to rounding for every logit
    (``H(0) = log 2``, ``H(+-inf) = 0``), and so is its derivative ``-x sigmoid(x) sigmoid(-x)``. Useful as an
    entropy bonus or to check that ``binary_cross_entropy_with_logits(x, sigmoid(t)) = H(t) + KL``. On CPU, large
    float32 reductions sum a select-free form of the same terms, within the same bound, in one pass over the
    inputs; its derivatives are the exact core's ("Sums on CPU" in the numerics docs).

    Args:
      logits: float16, bfloat16, float32 or float64 array of any shape ``S``.

    Returns:
      The entropy in the dtype of ``logits``.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> jaxbce.binary_entropy(jnp.array([0.0, 5.0, -50.0]), reduction="none")
      Array([6.9314718e-01, 4.0179603e-02, 9.8366250e-21], dtype=float32)
    """
    terms = Terms(_elementwise.binary_entropy, _elementwise.binary_entropy_fusible)
    return compute_loss(terms, [Arg("logits", logits, Role.LOGITS)], where=where, axis=axis, reduction=reduction)


@loss()
def binary_kl_divergence(
    logits: jax.typing.ArrayLike,
    target_logits: jax.typing.ArrayLike,
    *,
    weight: jax.typing.ArrayLike | None = None,
    where: jax.typing.ArrayLike | None = None,
    axis: int | tuple[int, ...] | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(x))) in nats, from student logits x and teacher logits t.

        KL = q log(q / p) + (1 - q) log((1 - q) / (1 - p)) = softplus(x) - softplus(t) - sigmoid(t) * (x - t)
        q = sigmoid(t),  p = sigmoid(x)

    It is evaluated as ``log1p`` of a sum of non-negative terms (see ``_elementwise.binary_kl_divergence``), so
    it is ``>= 0`` exactly, exactly 0 where ``x == t``, and accurate as ``x -> t``, where the textbook form
    cancels. ``binary_cross_entropy_with_logits(x, sigmoid(t)) = binary_entropy(t) + KL`` to rounding. The
    gradient in ``logits`` is ``sigmoid(x) - sigmoid(t)`` and in ``target_logits`` is
    ``-sigmoid'(t) (x - t)``; pass ``jax.lax.stop_gradient(t)`` for distillation from a fixed teacher.

    Args:
      logits: student logits, float16, bfloat16, float32 or float64, of any shape ``S``.
      target_logits: teacher logits of shape exactly ``S`` (real floating).

    Returns:
      The divergence in the dtype of ``logits``.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> jaxbce.binary_kl_divergence(jnp.array([2.0, 0.0]), jnp.array([2.0, 1e-3]), reduction="none")
      Array([0.0000000e+00, 1.2499999e-07], dtype=float32)
    """
    arrays = [Arg("logits", logits, Role.LOGITS), Arg("target_logits", target_logits, Role.LOGITS)]
    terms = Terms(_elementwise.binary_kl_divergence)
    return compute_loss(terms, arrays, weight=weight, where=where, axis=axis, reduction=reduction)
