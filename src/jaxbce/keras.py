"""Keras 3 loss classes on jaxbce's losses, for the JAX backend.

``import jaxbce`` never imports Keras; ``import jaxbce.keras`` does, with the JAX backend (it sets
``KERAS_BACKEND=jax`` unless the environment chose a backend, and refuses another one). The classes follow Keras's
conventions: Keras calls a loss as ``loss(y_true, y_pred, sample_weight=None)`` (labels first), each class
returns the mean over ``axis`` per example, and Keras's base class applies ``sample_weight`` (per example) and
the ``reduction`` (``"sum_over_batch_size"`` by default, ``"sum"``, ``"mean"``, ``"mean_with_sample_weight"``,
``"none"``). They serialise with ``get_config``/``from_config`` and are registered, so a model compiled with
one saves and reloads.

Why these classes and not the functions. ``model.compile(loss=jaxbce.binary_cross_entropy_with_logits)`` runs, but
Keras passes ``(y_true, y_pred)``: the labels would be taken as the logits, silently. A class puts the arguments
in Keras's order.

Example:
  >>> import numpy as np, jaxbce.keras
  >>> loss = jaxbce.keras.BinaryCrossentropy()  # from_logits=True
  >>> y_true, logits = np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[30.0, -2.0], [-40.0, 1.0]])
  >>> round(float(loss(y_true, logits)), 6)
  0.360047
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras

from jaxbce._losses import asymmetric_loss, binary_cross_entropy_with_logits, sigmoid_focal_loss

if keras.backend.backend() != "jax":
    raise ImportError(
        f"jaxbce.keras needs Keras's JAX backend, but Keras runs on {keras.backend.backend()!r}: set "
        "KERAS_BACKEND=jax before Keras is first imported"
    )

__all__ = ["AsymmetricLoss", "BinaryCrossentropy", "BinaryFocalCrossentropy", "probabilities_to_logits"]


def probabilities_to_logits(probs: jax.typing.ArrayLike) -> jax.Array:
    """``log(p) - log(1 - p)``, the logit of each probability: -inf at 0 and +inf at 1, with no clipping (Keras
    clips probabilities to ``[1e-7, 1 - 1e-7]``). ``log1p(-p)`` keeps ``1 - p`` exact for small ``p``."""
    probs = jnp.asarray(probs)
    return jnp.log(probs) - jnp.log1p(-probs)


def _aligned(y_true: jax.Array, y_pred: jax.Array) -> jax.Array:
    """``y_true`` with ``y_pred``'s rank where they differ by a trailing axis of size 1, as Keras's own losses
    take ``(N,)`` labels for ``(N, 1)`` predictions; any other mismatch is left to jaxbce's shape check."""
    if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1:] == (1,):
        return y_true[..., None]
    if y_pred.ndim == y_true.ndim - 1 and y_true.shape[-1:] == (1,):
        return y_true[..., 0]
    return y_true


class _JaxbceLoss(keras.losses.Loss):
    """The shared part: logits from ``y_pred``, labels aligned, the mean over ``axis`` per example."""

    def __init__(self, *, from_logits, axis, reduction, name, dtype, options):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.axis = axis
        self._options = options

    def _loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        raise NotImplementedError

    def call(self, y_true, y_pred):
        y_pred = jnp.asarray(y_pred)
        logits = y_pred if self.from_logits else probabilities_to_logits(y_pred)
        return self._loss(logits, _aligned(jnp.asarray(y_true), y_pred))

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits, "axis": self.axis, **self._options}


@keras.saving.register_keras_serializable(package="jaxbce")
class BinaryCrossentropy(_JaxbceLoss):
    """Binary cross-entropy, exact for every logit: :func:`jaxbce.binary_cross_entropy_with_logits` as a Keras loss.

    Args:
      from_logits: True (the default here; Keras's is False) when ``y_pred`` holds logits. False takes
        probabilities and converts them to logits exactly (:func:`probabilities_to_logits`): a probability of 0
        or 1 against the opposite label is an infinite loss, where Keras clips it to ``-log(1e-7)``.
      label_smoothing: labels become ``y * (1 - s) + s / 2``, as in Keras.
      pos_weight: optional weight of the positive term, a float or a per-class list (PyTorch's; Keras has none).
      axis: the axis averaged per example (Keras's ``axis``).
      reduction: Keras's reduction of the per-example losses.
      name: the loss's name.
      dtype: Keras's dtype of the computation (the inputs are cast to it).
    """

    def __init__(
        self,
        from_logits: bool = True,
        label_smoothing: float = 0.0,
        pos_weight: float | list[float] | None = None,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "binary_crossentropy",
        dtype: str | None = None,
    ):
        options = {"label_smoothing": label_smoothing, "pos_weight": pos_weight}
        super().__init__(
            from_logits=from_logits, axis=axis, reduction=reduction, name=name, dtype=dtype, options=options
        )

    def _loss(self, logits, labels):
        pos_weight = self._options["pos_weight"]
        return binary_cross_entropy_with_logits(
            logits,
            labels,
            pos_weight=None if pos_weight is None else jnp.asarray(pos_weight, logits.dtype),
            label_smoothing=self._options["label_smoothing"],
            axis=self.axis,
        )


@keras.saving.register_keras_serializable(package="jaxbce")
class BinaryFocalCrossentropy(_JaxbceLoss):
    """Sigmoid focal loss, exact for every logit and gamma: :func:`jaxbce.sigmoid_focal_loss` as a Keras loss.

    Keras's ``BinaryFocalCrossentropy(apply_class_balancing=True, alpha=a)`` is ``alpha=a`` here, and
    ``apply_class_balancing=False`` is ``alpha=None``.

    Args:
      alpha: weight of the positive class in [0, 1], or None for no class balancing.
      gamma: focusing parameter ``>= 0``.
      from_logits: True (the default here) when ``y_pred`` holds logits; False converts probabilities exactly.
      label_smoothing: applied to the labels before ``p_t`` and ``alpha_t``, as in Keras.
      axis: the axis averaged per example.
      reduction: Keras's reduction of the per-example losses.
      name: the loss's name.
      dtype: Keras's dtype of the computation.
    """

    def __init__(
        self,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        from_logits: bool = True,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "binary_focal_crossentropy",
        dtype: str | None = None,
    ):
        options = {"alpha": alpha, "gamma": gamma, "label_smoothing": label_smoothing}
        super().__init__(
            from_logits=from_logits, axis=axis, reduction=reduction, name=name, dtype=dtype, options=options
        )

    def _loss(self, logits, labels):
        return sigmoid_focal_loss(logits, labels, **self._options, axis=self.axis)


@keras.saving.register_keras_serializable(package="jaxbce")
class AsymmetricLoss(_JaxbceLoss):
    """The asymmetric loss (ASL) for multi-label classification: :func:`jaxbce.asymmetric_loss` as a Keras loss.

    Args:
      gamma_pos: focusing parameter of the positive term (the paper's default 0).
      gamma_neg: focusing parameter of the negative term (the paper's default 4).
      clip: probability margin shifted off the negatives (the paper's default 0.05).
      from_logits: True (the default here) when ``y_pred`` holds logits; False converts probabilities exactly.
      axis: the axis averaged per example.
      reduction: Keras's reduction of the per-example losses.
      name: the loss's name.
      dtype: Keras's dtype of the computation.
    """

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        from_logits: bool = True,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "asymmetric_loss",
        dtype: str | None = None,
    ):
        options = {"gamma_pos": gamma_pos, "gamma_neg": gamma_neg, "clip": clip}
        super().__init__(
            from_logits=from_logits, axis=axis, reduction=reduction, name=name, dtype=dtype, options=options
        )

    def _loss(self, logits, labels):
        return asymmetric_loss(logits, labels, **self._options, axis=self.axis)
