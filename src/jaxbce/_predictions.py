"""Predictions and metrics of extreme multi-label classification without the logits: the top-k classes of
``features @ kernel + bias`` over chunks of classes, precision@k and nDCG@k (propensity-scored or not), and the
propensity model of Jain et al.

Why a running top-k merged by a sort. Each step of the chunk loop (``_chunks``) forms a chunk's logits, takes the
top ``k`` of each group of classes in it (``lax.top_k``: within a group, chunk positions ascend with the class
index, so its ties keep the lower index first), and merges them with the running top ``k`` by one sort on the
keys (score descending, class index ascending): the result is ``lax.top_k`` of the whole row, ties included,
whatever order the groups' classes are visited in. With the kernel sharded over classes each group is one
shard's, so each device reduces its own classes and only ``k`` candidates per group meet in the merge.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbce import _chunks
from jaxbce._arguments import Role, as_mask, check_shape, checked_array, compute_dtype
from jaxbce._fused_arguments import checked_head, concrete_class_shards
from jaxbce._jit import jit_loss
from jaxbce._sharding import explicit_spec, with_auto_axes


@jit_loss(static=("k", "chunk_size", "precision", "kernel_layout"), hint=concrete_class_shards)
def linear_top_k(
    features: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    k: int,
    *,
    bias: jax.typing.ArrayLike | None = None,
    chunk_size: int | None = None,
    precision: jax.lax.PrecisionLike = None,
    kernel_layout: str = "in_out",
) -> tuple[jax.Array, jax.Array]:
    """The ``k`` highest logits of ``features @ kernel + bias`` and their classes, without ever forming the logits.

    Equal to ``jax.lax.top_k(features @ kernel + bias, k)``, ties broken as it breaks them (the lower class index
    first), computed over chunks of classes (the module notes) so that no ``(..., C)`` array exists. The logits
    are formed in float32 (float64 under x64), as the fused losses form them.

    Args:
      features: ``(..., D)`` float16, bfloat16, float32 or float64.
      kernel: ``(D, C)``, or ``(C, D)`` with ``kernel_layout="out_in"``.
      k: static number of classes per example, ``1 <= k <= C``.
      bias: optional ``(C,)``.
      chunk_size: static, as for :func:`linear_binary_cross_entropy`.
      precision: static, as for :func:`linear_binary_cross_entropy`.
      kernel_layout: static, as for :func:`linear_binary_cross_entropy`.

    Returns:
      ``(scores, indices)`` of shape ``features.shape[:-1] + (k,)``: the logits, highest first, in the promoted
      dtype of ``features`` and ``kernel``, and their class indices (int32).

    Raises:
      TypeError: a floating argument of another dtype.
      ValueError: ``k`` not in ``[1, C]``; shapes as for :func:`linear_binary_cross_entropy`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxbce
      >>> features = jnp.array([[1.0, -2.0], [0.5, 0.0]])
      >>> kernel = jnp.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
      >>> jaxbce.linear_top_k(features, kernel, 2)
      (Array([[ 0. , -1. ],
             [ 0.5,  0. ]], dtype=float32), Array([[0, 2],
             [0, 1]], dtype=int32))
      >>> jax.lax.top_k(features @ kernel, 2)[1]
      Array([[0, 2],
             [0, 1]], dtype=int32)
    """
    head = checked_head("linear_top_k()", features, kernel, bias, chunk_size, kernel_layout)
    features, kernel, bias, kernel_axis = head.features, head.kernel, head.bias, head.kernel_axis
    classes = kernel.shape[kernel_axis]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= classes:
        raise ValueError(f"linear_top_k(): k must be an int in [1, C] = [1, {classes}], got {k!r}")
    out_dtype = jnp.result_type(features.dtype, kernel.dtype)
    dtype = compute_dtype(out_dtype)
    batch = features.shape[:-1]
    rows = math.prod(batch)
    layout = _chunks.choose_layout(classes, rows, chunk_size, head.groups)
    config = _chunks.Config(layout, None, None, precision, dtype, kernel_axis)
    flat_features = features.reshape(rows, features.shape[-1]).astype(dtype)
    laid_out = _chunks.by_chunk(kernel, layout, axis=kernel_axis)
    laid_out_bias = None if bias is None else _chunks.by_chunk(bias.astype(dtype), layout)
    # Under Explicit axes the loop runs as under Auto ones (_sharding.with_auto_axes); the results are sharded
    # as the features' rows.
    rows_spec = jax.sharding.PartitionSpec(*(explicit_spec(features) or (None,))[:1])
    top_k = functools.partial(_top_k_by_chunks, config, k)
    scores, indices = with_auto_axes(top_k, flat_features, laid_out, laid_out_bias, out_specs=(rows_spec, rows_spec))
    return scores.reshape(*batch, k).astype(out_dtype), indices.reshape(*batch, k)


def _top_k_by_chunks(config: _chunks.Config, k: int, features, kernel, bias) -> tuple[jax.Array, jax.Array]:
    layout = config.layout
    rows, per_group = features.shape[0], min(k, layout.width)

    def step(j, best):
        logits = _chunks.chunk_logits(config, features, _chunks.take(kernel, j, layout, config.kernel_axis))
        if bias is not None:
            logits = logits + _chunks.take(bias, j, layout).reshape(-1)
        logits = logits.reshape(rows, layout.groups, layout.width)
        fresh = layout.fresh(j)
        if fresh is not None:  # the overlap of the last step: classes already visited
            logits = jnp.where(fresh, logits, -jnp.inf)
        scores, positions = jax.lax.top_k(logits, per_group)  # (rows, groups, per_group)
        group_first = jnp.arange(layout.groups, dtype=jnp.int32)[:, None] * layout.group_size
        classes = group_first + layout.start(j).astype(jnp.int32) + positions
        return _merge(best, (scores.reshape(rows, -1), classes.reshape(rows, -1)), k)

    # Placeholders lose every comparison: the lowest score, and a class index past every real one.
    initial = (jnp.full((rows, k), -jnp.inf, config.dtype), jnp.full((rows, k), layout.classes, jnp.int32))
    initial = _chunks.vary_together(initial, features, kernel)
    return jax.lax.fori_loop(0, layout.steps, step, initial)


def _merge(best, candidates, k: int):
    """The top ``k`` of both, by score descending and then class index ascending (``lax.top_k``'s order)."""
    scores = jnp.concatenate([best[0], candidates[0]], axis=-1)
    indices = jnp.concatenate([best[1], candidates[1]], axis=-1)
    negated, indices = jax.lax.sort((-scores, indices), dimension=-1, num_keys=2)
    return -negated[:, :k], indices[:, :k]


@jit_loss(static=("k",))
def precision_at_k(
    indices: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike | None = None,
    *,
    positives: jax.typing.ArrayLike | None = None,
    k: int,
    propensities: jax.typing.ArrayLike | None = None,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Precision@k per example, as the Extreme Classification Repository's evaluation tools define it:
    ``P@k = (1/k) sum_{l in top k} y_l``; with ``propensities`` the numerator of PSP@k,
    ``(1/k) sum_{l in top k} y_l / p_l``.

    PSP@k over a data set is the mean of these numerators divided by the same mean for the best possible
    ranking (each example's true labels sorted by ``1 / p_l``): ``psp = precision_at_k(predicted, ...,
    propensities=p).mean() / precision_at_k(ideal, ..., propensities=p).mean()`` (docs/api.md shows it).

    Args:
      indices: ``(..., K)`` int predicted classes, best first (``linear_top_k``'s), ``K >= k``.
      labels: dense ``(..., C)`` labels in {0, 1} (bool, integer or floating), or None with ``positives``.
      positives: ``(..., P)`` int true classes padded with -1 (a repeated class counts once).
      k: static ``1 <= k <= K``.
      propensities: optional ``(C,)`` propensity of each class (``propensity_scores``).
      where: optional bool mask of the examples, broadcastable to ``indices.shape[:-1]``: masked ones give 0.

    Returns:
      ``indices.shape[:-1]`` float32 (float64 under x64 with float64 propensities).

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> top = jnp.array([[3, 1, 0], [2, 0, 1]])
      >>> jaxbce.precision_at_k(top, positives=jnp.array([[1, 3], [0, -1]]), k=3)
      Array([0.6666667 , 0.33333334], dtype=float32)
    """
    relevance = _relevance("precision_at_k()", indices, labels, positives, k, propensities, where)
    return jnp.sum(relevance, axis=-1) / k


@jit_loss(static=("k",))
def ndcg_at_k(
    indices: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike | None = None,
    *,
    positives: jax.typing.ArrayLike | None = None,
    k: int,
    propensities: jax.typing.ArrayLike | None = None,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """nDCG@k per example, as the Extreme Classification Repository's evaluation tools define it:
    ``DCG@k = sum_{i=1..k} y_{l_i} / log2(i + 1)`` divided by the best DCG that the example's number of true
    labels allows, ``sum_{i=1..min(k, |y|)} 1 / log2(i + 1)`` (0 for an example without labels). With
    ``propensities``, the PSnDCG@k numerator: ``y_{l_i} / p_{l_i}`` in the DCG, over the same denominator; over a
    data set it is normalised as :func:`precision_at_k`'s PSP@k is.

    Args:
      indices: as for :func:`precision_at_k`.
      labels: as for :func:`precision_at_k`.
      positives: as for :func:`precision_at_k`.
      k: as for :func:`precision_at_k`.
      propensities: as for :func:`precision_at_k`.
      where: as for :func:`precision_at_k`.

    Returns:
      ``indices.shape[:-1]`` float32.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> top = jnp.array([[3, 1, 0], [2, 0, 1]])
      >>> jaxbce.ndcg_at_k(top, positives=jnp.array([[1, 3], [0, -1]]), k=3)
      Array([1.        , 0.63092977], dtype=float32)
    """
    relevance = _relevance("ndcg_at_k()", indices, labels, positives, k, propensities, where)
    discounts = 1 / jnp.log2(jnp.arange(2, k + 2, dtype=relevance.dtype))
    count = _label_count(labels, positives, relevance.shape[:-1])
    ideal = jnp.cumsum(discounts)[jnp.clip(count, 1, k) - 1]
    return jnp.where(count > 0, jnp.sum(relevance * discounts, axis=-1) / ideal, 0)


def _relevance(function, indices, labels, positives, k, propensities, where):
    """``(..., k)``: whether each of the top ``k`` predictions is a true label (divided by its propensity)."""
    indices = checked_array("indices", indices, Role.INDICES)
    if indices.ndim < 1:
        raise ValueError(f"{function}: indices must have shape (..., K), got a scalar")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= indices.shape[-1]:
        raise ValueError(f"{function}: k must be an int in [1, K] = [1, {indices.shape[-1]}], got {k!r}")
    if (labels is None) == (positives is None):
        raise ValueError(f"{function}: pass exactly one of labels (dense (..., C)) and positives ((..., P))")
    top = indices[..., :k]
    batch = indices.shape[:-1]
    if labels is not None:
        labels = checked_array("labels", labels, Role.LABELS)
        check_shape("labels", labels, (*batch, "C"), "indices.shape[:-1] + (C,)")
        hit = jnp.take_along_axis(labels, jnp.clip(top, 0, labels.shape[-1] - 1), axis=-1) > 0
        hit = hit & (top >= 0) & (top < labels.shape[-1])
    else:
        positives = checked_array("positives", positives, Role.INDICES)
        check_shape("positives", positives, (*batch, "P"), "indices.shape[:-1] + (P,)")
        hit = ((top[..., :, None] == positives[..., None, :]) & (positives[..., None, :] >= 0)).any(axis=-1)
    dtype = jnp.float32
    relevance = hit.astype(dtype)
    if propensities is not None:
        propensities = checked_array("propensities", propensities, Role.NON_NEGATIVE)
        check_shape("propensities", propensities, ("C",), "(C,): one per class")
        dtype = compute_dtype(propensities.dtype)
        relevance = jnp.where(hit, 1 / propensities[jnp.clip(top, 0, propensities.shape[-1] - 1)], 0).astype(dtype)
    if where is not None:
        relevance = jnp.where(as_mask(where, batch, "indices.shape[:-1]")[..., None], relevance, 0)
    return relevance


def _label_count(labels, positives, batch) -> jax.Array:
    if labels is not None:
        return jnp.sum(jnp.asarray(labels) > 0, axis=-1)
    positives = jnp.asarray(positives)
    first = jnp.argmax(positives[..., :, None] == positives[..., None, :], axis=-1)  # a repeat counts once
    unique = (positives >= 0) & (first == jnp.arange(positives.shape[-1]))
    return jnp.broadcast_to(jnp.sum(unique, axis=-1), batch)


@jit_loss(static=("num_examples", "a", "b"))
def propensity_scores(
    label_counts: jax.typing.ArrayLike, num_examples: int, a: float = 0.55, b: float = 1.5
) -> jax.Array:
    """Jain et al. (KDD 2016)'s propensity of each label:
    ``p_l = 1 / (1 + (log N - 1) (b + 1)^a exp(-a log(n_l + b)))``, ``N`` the number of training examples and
    ``n_l`` label ``l``'s count in them.

    The paper's values: ``a = 0.55, b = 1.5`` (the default, its choice for most data sets), ``a = 0.6,
    b = 2.6`` for Amazon(-670K, -3M) and ``a = 0.5, b = 0.4`` for Wikipedia (WikiLSHTC-325K, Wiki-500K).

    Args:
      label_counts: ``(C,)`` the number of training examples of each label.
      num_examples: ``N``, the number of training examples.
      a: the model's parameter.
      b: the model's parameter.

    Returns:
      ``(C,)`` propensities in (0, 1], float32 (float64 for float64 counts under x64).

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> jaxbce.propensity_scores(jnp.array([0.0, 10.0, 1000.0]), 10_000)
      Array([0.08421963, 0.21993187, 0.7668726 ], dtype=float32)
    """
    counts = checked_array("label_counts", label_counts, Role.NON_NEGATIVE)
    dtype = compute_dtype(counts.dtype if jnp.issubdtype(counts.dtype, jnp.floating) else np.float32)
    counts = counts.astype(dtype)
    c = (math.log(num_examples) - 1) * (b + 1) ** a
    return 1 / (1 + c * jnp.exp(-a * jnp.log(counts + b)))
