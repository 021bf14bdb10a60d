"""Class-balance weights from label counts, for ``pos_weight`` and ``weight`` of the multi-label losses."""

import math

import jax
import jax.numpy as jnp

from jaxbce._arguments import Role, check_broadcasts, checked_array, compute_dtype, is_python_number
from jaxbce._jit import jit_loss
from jaxbce._value_checks import check_values, register_value_checks, value_checks_enabled


def _counts(name: str, value: jax.typing.ArrayLike) -> jax.Array:
    counts = checked_array(name, value, Role.NON_NEGATIVE)
    register_value_checks(name, Role.NON_NEGATIVE, counts, None)
    return counts.astype(compute_dtype(counts.dtype))  # integer counts: float32


@jit_loss(static=())
def pos_weight_from_counts(positive_counts: jax.typing.ArrayLike, total_counts: jax.typing.ArrayLike) -> jax.Array:
    """PyTorch's recipe for ``pos_weight``: negatives per positive, ``(total - positives) / positives``, per class.

    With it, the positives of a class weigh as much in the loss as its negatives. A class with no positive
    example gets weight 1, not inf: its loss has no positive term to up-weight, and an infinite weight would
    turn the first positive that ever appears into an infinite loss. (A class whose examples are all positive
    gets 0: its positives are not up-weighted at all.)

    Args:
      positive_counts: number of positive examples per class, shape ``(C,)`` (or any shape), integer or
        floating, non-negative.
      total_counts: number of labelled examples per class, broadcastable to ``positive_counts`` (a scalar for
        the data set size), at least ``positive_counts`` (reported by the value checks, :func:`jaxbce.checked`,
        where it is not: the weight would be negative).

    Returns:
      float32 weights (float64 for float64 counts) of the broadcast shape.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> jaxbce.pos_weight_from_counts(jnp.array([10, 250, 0]), 1000)
      Array([99.,  3.,  1.], dtype=float32)
    """
    positives = _counts("positive_counts", positive_counts)
    totals = _counts("total_counts", total_counts)
    check_broadcasts("total_counts", totals.shape, positives.shape, "positive_counts")
    dtype = jnp.promote_types(positives.dtype, totals.dtype)
    positives, totals = positives.astype(dtype), totals.astype(dtype)
    if value_checks_enabled():
        more = jnp.broadcast_to(positives, jnp.broadcast_shapes(positives.shape, totals.shape))
        check_values(
            "positive_counts", more, more <= totals,
            "must be at most total_counts (a class cannot have more positive examples than examples: pass the "
            "number of labelled examples as total_counts)",
        )  # fmt: skip
    safe = jnp.where(positives == 0, 1, positives)
    return jnp.where(positives == 0, 1, (totals - positives) / safe)


@jit_loss(static=("beta",))
def class_balanced_weights(counts: jax.typing.ArrayLike, beta: float = 0.999) -> jax.Array:
    """Class-balanced weights (Cui et al., CVPR 2019): the inverse of each class's effective number of examples,
    ``(1 - beta) / (1 - beta**n)``, normalised to sum to the number of classes.

    ``1 - beta**n`` is formed as ``-expm1(n log(beta))``, exact for ``beta`` close to 1, where the direct form
    cancels. A class with no example (``n = 0``) gets weight 0, and the others share the sum ``C``; if no class
    has an example, every weight is 0. ``beta = 0`` gives equal weights (constants of the counts: zero
    derivative), ``beta -> 1`` inverse frequencies. The derivatives in ``counts`` are finite for every ``beta``.
    The normalisation is over the classes it is given: inside ``shard_map``, pass every class's counts.

    Args:
      counts: number of examples per class, shape ``(..., C)``, integer or floating, non-negative. The weights
        are normalised along the last axis.
      beta: static float in [0, 1).

    Returns:
      float32 weights (float64 for float64 counts) of the shape of ``counts``, for ``weight=`` or ``pos_weight=``.

    Raises:
      ValueError: ``beta`` outside [0, 1); ``counts`` a scalar.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> jaxbce.class_balanced_weights(jnp.array([1000, 100, 10, 0]), beta=0.99)
      Array([0.30686286, 0.4840147 , 3.2091227 , 0.        ], dtype=float32)
    """
    if not is_python_number(beta) or not 0 <= beta < 1:
        raise ValueError(f"beta must be a Python float in [0, 1), got {beta!r}")
    n = _counts("counts", counts)
    if n.ndim == 0:
        raise ValueError("counts must have a class axis (shape (..., C)), got a scalar")
    empty = n == 0
    if beta == 0:  # beta**n is 0 for every n > 0: equal weights, constants in the counts (no 0 * log(0))
        raw = jnp.where(empty, 0, jnp.ones_like(n))
    else:
        effective = -jnp.expm1(jnp.where(empty, 1, n) * math.log(beta))  # 1 - beta**n
        raw = jnp.where(empty, 0, (1 - beta) / effective)
    total = jnp.sum(raw, axis=-1, keepdims=True)
    return raw * (n.shape[-1] / jnp.where(total == 0, 1, total))
