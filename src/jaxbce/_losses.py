"""The public jaxbce losses: each names its arguments, picks an elementwise core and hands both to the pipeline.

Shared semantics (see also ``shared/spec/API.md``):

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
* ``label_smoothing``, ``alpha`` and ``gamma`` are static Python floats (one compilation per value).
"""

import functools

import jax

from jaxbce import _elementwise
from jaxbce._pipeline import Arg, Role, check_fraction, compute_loss

_static = functools.partial(jax.jit, static_argnames=("label_smoothing", "axis", "reduction"))


@_static
def binary_cross_entropy_with_logits(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    weight: jax.typing.ArrayLike | None = None,
    pos_weight: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
    where: jax.typing.ArrayLike | None = None,
    axis: int | tuple[int, ...] | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""Binary cross-entropy from logits, exact to rounding everywhere, with exact derivatives of every order.

    Per element, with ``x = logits``, ``y = labels`` (after smoothing) and ``pw = pos_weight``:

    .. math::

        \ell(x, y) = w \cdot \bigl(pw \cdot y \cdot \mathrm{softplus}(-x) + (1 - y)\,\mathrm{softplus}(x)\bigr)

    which is ``-w * (pw * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x)))`` without ever forming
    ``sigmoid(x)``. It is evaluated as ``a * |x| + c * softplus(-|x|)`` with non-negative ``a`` and ``c``, so no
    term cancels another, and its ``custom_jvp`` rule gives the gradient ``sigmoid(x) - y`` (for ``pw = 1``) in a
    form that stays exact where ``sigmoid(x)`` rounds to 1. Within 1.5 eps of a 50-digit reference for every
    finite logit (value and logits gradient for hard labels), and ``d/dx = 0.5 - y``, ``d2/dx2 = 0.25`` at 0.

    Args:
      logits: float16, bfloat16, float32 or float64 array of any shape ``S``.
      labels: array of shape exactly ``S`` (floating, integer or bool), values in [0, 1]; soft labels allowed.
      weight: optional non-negative weight broadcastable to ``S`` (PyTorch's ``weight``): multiplies each
        element's loss.
      pos_weight: optional non-negative weight of the positive term broadcastable to ``S`` (PyTorch's
        ``pos_weight``; a shape ``(C,)`` applies per class along the last axis). ``pw > 1`` raises recall.
      label_smoothing: static float ``s`` in [0, 1]; labels become ``y * (1 - s) + s / 2`` (Keras).
      where: optional bool mask broadcastable to ``S``; False elements contribute exactly 0 to the value and
        to every gradient, even if their logits or labels are NaN or inf.
      axis: axes to reduce (None: all). With ``reduction="mean", axis=-1`` you get one loss per example.
      reduction: ``"none"``, ``"sum"``, ``"mean"`` (default; divides by the number of kept elements) or
        ``"weighted_mean"`` (divides by the sum of kept weights).

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
      Array(0.35283..., dtype=float32)
    """
    label_smoothing = check_fraction("label_smoothing", label_smoothing)
    return compute_loss(
        lambda x, y, pw: _elementwise.bce_with_logits(x, y, pw, label_smoothing),
        [
            Arg("logits", logits, Role.LOGITS),
            Arg("labels", labels, Role.LABELS),
            Arg("pos_weight", pos_weight, Role.NON_NEGATIVE),
        ],
        weight=weight,
        where=where,
        axis=axis,
        reduction=reduction,
    )
