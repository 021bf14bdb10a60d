"""The SigLIP sigmoid contrastive loss (Zhai et al., ICCV 2023) without its ``B x B`` logits.

Every image-text pair of a batch is one binary classification, positive on the diagonal:

    loss = (1/B) sum_ij bce(logit_scale <x_i, z_j> + logit_bias, [i == j])

which is :func:`jaxbce.linear_binary_cross_entropy` with the images as features, ``logit_scale * texts`` as
the kernel in the ``(C, D)`` layout and one positive class per row. So this module adds no loss formula and no
chunked loop of its own: each block of pairs goes through ``_chunks.row_losses_and_gradients`` (the same BCE
core and gradient rule, chunked over texts), and what is here is how blocks are visited and how their
gradients are gathered.

Why a custom VJP with the gradients formed in the forward pass. The loss is a scalar, so as in
``_linear`` each block's gradients are formed when the block is visited (three matmuls per chunk of texts) and
the backward pass only scales them: autodiff of the loop would keep every block's residuals, which is the
``B x B`` memory the loss exists to avoid.

Why a ring. With ``axis_name``, each device keeps its ``b = B / n`` image rows and text rows, and the text rows
travel: at step ``k`` a device holds the texts of device ``me + k`` and passes them to ``me - 1``. The gradient
of a text block travels with it, each device adding its share, and after ``n`` steps every block is home with
its whole gradient: ``n`` collective permutes of ``2 b x D`` numbers, no all-gather, and no device ever holds
more than its own rows, one visiting block and one chunk of logits.

Why the ring's ``custom_vjp`` returns each device's share and the ``psum`` comes after it. Autodiff then
transposes the ``psum`` itself, as it does for the dense formula, in both ``shard_map`` modes: with
``check_vma=True`` the cotangent reaches every device whole, and with ``check_vma=False`` ``shard_map`` divides a
replicated output's cotangent by ``n`` and the transposed ``psum`` sums it back. Either way every device's
share gets the same cotangent, which is what the text gradients summed around the ring assume. The scalars are
made to vary over the axis before the ``custom_vjp``, so their gradients are each device's share, summed by the
transpose of that broadcast (or by ``shard_map`` for a replicated input without ``check_vma``); a ``psum`` inside
the ``custom_vjp`` gave the embeddings ``1/n`` of their gradient under ``check_vma=False``.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbce import _chunks, _cores
from jaxbce._arguments import Role, as_mask, check_chunk_size, check_shape, checked_array, compute_dtype
from jaxbce._jit import jit_loss
from jaxbce._numerics import weighted
from jaxbce._sharding import devices_that_could_shard, shards_along, with_auto_axes
from jaxbce._value_checks import register_value_checks, value_checks_enabled

# Image rows per block on one device, and texts per chunk of a block: about 2^20 pairs (4 MiB of float32
# logits, and as much for their gradient), half of _linear's chunk, so that the ring's temporaries stay below
# twice one device's b x b block and embeddings (bench/contrastive.py); matmuls of 1024 x 1024 x D still run
# at full speed.
_ROWS = 1024
_BLOCK_ELEMENTS = 2**20


# The SigLIP loss is the BCE of every pair, positive on the diagonal.
_BCE = _cores.bce()


class _Config(NamedTuple):
    rows: int  # image rows per block (single device)
    chunk_size: int | None  # texts per chunk inside a block
    text_groups: int  # the layout's groups of texts (_chunks): the shards the texts may be split into
    precision: object
    dtype: np.dtype
    axis_name: object


class _Gradients(NamedTuple):
    images: jax.Array
    texts: jax.Array
    scale: jax.Array
    bias: jax.Array


def _block(config: _Config, images, texts, scale, bias, row_scale, row_offset, texts_kept, *, gradients: bool):
    """One block of pairs: ``images (R, D)`` against ``texts (T, D)``, with row ``i`` positive at text
    ``row_offset + i`` (a negative or out-of-range offset: no positive). Returns the row losses and, if
    ``gradients``, the gradients of ``sum(row_scale * row_losses)``."""
    rows, classes = images.shape[0], texts.shape[0]
    chunk = config.chunk_size or max(_chunks.MIN_CHUNK, _BLOCK_ELEMENTS // rows)
    layout = _chunks.choose_layout(classes, rows, chunk, config.text_groups)
    # The texts are the kernel in the (C, D) layout, scaled: the logits are scale * images @ texts.T + bias.
    linear_config = _chunks.Config(layout, _BCE, None, config.precision, config.dtype, kernel_axis=-2)
    parameters = _chunks.Parameters(
        features=images,
        kernel=_chunks.by_chunk(scale * texts, layout, axis=-2),
        bias=_chunks.by_chunk(jnp.broadcast_to(bias, (classes,)), layout),
        per_class=None,
    )
    positive = row_offset + jnp.arange(rows)
    targets = _chunks.Targets(
        labels=None,
        positives=jnp.where((positive >= 0) & (positive < classes), positive, -1)[:, None],
        keep=None,
        classes_kept=None if texts_kept is None else _chunks.by_chunk(texts_kept, layout, fill=False),
    )
    if not gradients:
        return _chunks.row_losses(linear_config, parameters, targets), None
    wanted = _chunks.Parameters(features=True, kernel=True, bias=True, per_class=False, weight=False)
    losses, grads = _chunks.row_losses_and_gradients(linear_config, parameters, targets, row_scale, wanted)
    d_kernel = _chunks.from_chunks(grads.kernel, layout, axis=-2)  # (T, D)
    return losses, _Gradients(
        images=grads.features,
        texts=scale * d_kernel,
        scale=jnp.sum(d_kernel * texts),
        bias=jnp.sum(grads.bias),
    )


def _single_device(config: _Config, images, texts, scale, bias, row_scale, kept, *, gradients: bool):
    """All pairs on one device: blocks of ``config.rows`` image rows against every text (chunked inside)."""
    batch, dim = images.shape
    blocks = -(-batch // config.rows)
    padding = blocks * config.rows - batch
    padded_images = jnp.pad(images, ((0, padding), (0, 0))).reshape(blocks, config.rows, dim)
    padded_scale = jnp.pad(row_scale, (0, padding)).reshape(blocks, config.rows)

    def step(i, carry):
        total, grads = carry
        losses, block = _block(
            config, padded_images[i], texts, scale, bias, padded_scale[i], i * config.rows, kept, gradients=gradients
        )
        total = total + jnp.sum(weighted(padded_scale[i], losses))
        if gradients:
            grads = _Gradients(
                images=jax.lax.dynamic_update_index_in_dim(grads.images, block.images, i, axis=0),
                texts=grads.texts + block.texts,
                scale=grads.scale + block.scale,
                bias=grads.bias + block.bias,
            )
        return total, grads

    zero = jnp.zeros((), config.dtype)
    grads = _Gradients(jnp.zeros_like(padded_images), jnp.zeros_like(texts), zero, zero) if gradients else None
    total, grads = jax.lax.fori_loop(0, blocks, step, (zero, grads))
    if gradients:
        grads = grads._replace(images=grads.images.reshape(-1, dim)[:batch])
    return total, grads


def _ring(config: _Config, images, texts, scale, bias, row_scale, kept, *, gradients: bool):
    """All pairs across the devices of ``config.axis_name``, texts travelling around the ring (module docs)."""
    axis = config.axis_name
    devices = jax.lax.axis_size(axis)
    to_previous = [(i, (i - 1) % devices) for i in range(devices)]

    def step(k, carry):
        total, visiting, visiting_kept, d_visiting, grads = carry
        # The diagonal is in the block a device starts with, its own texts.
        offset = jnp.where(k == 0, 0, -images.shape[0] - 1)
        losses, block = _block(
            config, images, visiting, scale, bias, row_scale, offset, visiting_kept, gradients=gradients
        )
        total = total + jnp.sum(weighted(row_scale, losses))
        if gradients:
            d_visiting = d_visiting + block.texts
            grads = _Gradients(
                grads.images + block.images, grads.texts, grads.scale + block.scale, grads.bias + block.bias
            )
        visiting, visiting_kept, d_visiting = jax.lax.ppermute((visiting, visiting_kept, d_visiting), axis, to_previous)
        return total, visiting, visiting_kept, d_visiting, grads

    zero = _chunks.zeros((), config.dtype, images, texts)
    grads = _Gradients(jnp.zeros_like(images), None, zero, zero) if gradients else None
    d_texts = jnp.zeros_like(texts) if gradients else None
    carry = (zero, texts, kept, d_texts, grads)
    total, _, _, d_texts, grads = jax.lax.fori_loop(0, devices, step, carry)
    if gradients:
        grads = grads._replace(texts=d_texts)
    return total, grads


def _all_pairs(config, images, texts, scale, bias, row_scale, kept, *, gradients):
    visit = _single_device if config.axis_name is None else _ring
    return visit(config, images, texts, scale, bias, row_scale, kept, gradients=gradients)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _total(config: _Config, images, texts, scale, bias, row_scale, kept):
    """The loss (one device), or this device's share of it (the ring; the caller sums the shares)."""
    return _all_pairs(config, images, texts, scale, bias, row_scale, kept, gradients=False)[0]


def _total_fwd(config, images, texts, scale, bias, row_scale, kept):
    return _all_pairs(config, images, texts, scale, bias, row_scale, kept, gradients=True)  # residuals: grads


def _total_bwd(config, grads, cotangent):
    scaled = jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grads)
    return (*scaled, None, None)


_total.defvjp(_total_fwd, _total_bwd)


def _check_axis_name(axis_name) -> None:
    """A ``ValueError`` that says what to pass when ``axis_name`` names no axis of the enclosing ``shard_map`` (or
    ``pmap``), or when it is missing inside ``shard_map``, where each device would score its own rows only."""
    manual = tuple(getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ()))
    if axis_name is None:
        if manual:
            raise ValueError(
                f"sigmoid_contrastive_loss is called inside shard_map (manual axes {manual}) without axis_name, so "
                "each device would pair its own rows only; pass axis_name=<the mesh axis the rows are sharded "
                f"over>, e.g. axis_name={manual[0]!r}"
            )
        return
    for name in axis_name if isinstance(axis_name, tuple) else (axis_name,):
        try:
            jax.lax.axis_size(name)
        except NameError:
            where = f"the enclosing shard_map's axes are {manual}" if manual else "it is not called inside shard_map"
            raise ValueError(
                f"axis_name={axis_name!r} names no mesh axis here ({where}); pass the axis that the embedding rows "
                "are sharded over, inside jax.shard_map, or axis_name=None on one device"
            ) from None


@jit_loss(static=("axis_name", "chunk_size", "precision"))
def sigmoid_contrastive_loss(
    image_embeddings: jax.typing.ArrayLike,
    text_embeddings: jax.typing.ArrayLike,
    logit_scale: jax.typing.ArrayLike,
    logit_bias: jax.typing.ArrayLike | None,
    *,
    where: jax.typing.ArrayLike | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    chunk_size: int | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """The SigLIP sigmoid contrastive loss (Zhai et al., ICCV 2023), without ever forming its ``B x B`` logits.

        logits_ij = logit_scale * <x_i, z_j> + logit_bias,    s_ij = +1 if i == j else -1
        loss = -(1/B) * sum_i sum_j log sigmoid(s_ij * logits_ij)

    the sum over texts and the mean over images of big_vision's dense ``sigmoid_xent`` form; each pair's term
    is :func:`binary_cross_entropy_with_logits`'s exact core at label ``[i == j]``. The pairs are visited in
    blocks (see ``jaxbce/_contrastive.py``): on one device, blocks of ``chunk_size`` (default 1024) images
    against the texts in chunks of ``chunk_size`` (default about 2^20 / rows), so memory beyond the arguments
    is a few arrays of one chunk's size and a few of the embeddings' (their gradients).

    With ``axis_name``, call it inside ``jax.shard_map`` over that mesh axis, with each device's rows of both
    embeddings (and of ``where``) and ``logit_scale``, ``logit_bias`` replicated: the text rows travel around
    the ring of devices by ``ppermute``, and so do their gradients, home. The result on every device is the
    global loss, equal to the single-device loss of the whole batch to float32 summation order; no device
    holds more than its own rows, one visiting block of texts and one chunk of logits, and there is no
    all-gather. ``docs/scaling.md`` has a complete train step.

    Args:
      image_embeddings: ``(B, D)`` (local rows ``(b, D)`` with ``axis_name``) float16, bfloat16, float32 or
        float64; used as given (SigLIP normalises them first: ``x / jnp.linalg.norm(x, axis=-1, keepdims=True)``).
      text_embeddings: the same shape and kind.
      logit_scale: scalar multiplier of the dot products, the scale itself (SigLIP keeps its log as the
        parameter and passes ``jnp.exp(log_scale)``; the paper starts at ``log 10``).
      logit_bias: scalar bias (the paper starts at -10), or None for no bias.
      where: optional ``(B,)`` bool; False drops the pair's image from the rows, its text from the columns and
        the example from the count ``B`` (padding of a last, short batch).
      axis_name: static name of the ``shard_map`` axis to ring over, or None for one device.
      chunk_size: static positive int: image rows per block (one device) and texts per chunk (rounded down to
        a multiple of the shards the texts may be split into, so that each shard's chunk stays local).
      precision: static ``jax.lax.Precision`` of the matmuls.

    Returns:
      The scalar loss in the promoted dtype of the embeddings (computed in float32, or float64 for float64).

    Gradients: reverse mode in both embeddings, ``logit_scale`` and ``logit_bias``, formed block by block in
    the forward pass of a ``jax.custom_vjp`` (the backward pass only scales them), equal to the dense form's
    under the same transformations as :func:`linear_binary_cross_entropy`, and inside ``shard_map`` with
    ``check_vma`` True or False. Second derivatives work as reverse-over-reverse and forward-over-reverse
    (``jax.hessian``, holding the pairs' residuals); forward mode alone is not supported (JAX raises a
    ``TypeError``). Under :func:`jaxbce.checked`, NaN in a kept row of either embedding, or in ``logit_scale``
    or ``logit_bias``, is reported with its index.

    Raises:
      TypeError: embeddings or scalars not real floating, ``where`` not bool.
      ValueError: embeddings not two-dimensional or of different shapes; ``logit_scale`` or ``logit_bias``
        not scalars; ``where`` not ``(B,)``; a bad ``chunk_size``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxbce
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
      >>> jaxbce.sigmoid_contrastive_loss(x, x, 10.0, -10.0)
      Array(0.78989613, dtype=float32)
      >>> logits = 10.0 * x @ x.T - 10.0  # the dense form, big_vision's
      >>> print(f"{-jnp.sum(jax.nn.log_sigmoid((2 * jnp.eye(3) - 1) * logits)) / 3:.6f}")
      0.789896
    """
    images = checked_array("image_embeddings", image_embeddings, Role.LOGITS)
    texts = checked_array("text_embeddings", text_embeddings, Role.LOGITS)
    if images.ndim != 2 or texts.shape != images.shape:
        raise ValueError(
            f"image_embeddings and text_embeddings must both have shape (B, D), got {images.shape} and {texts.shape}"
        )
    scale = checked_array("logit_scale", logit_scale, Role.LOGITS)
    bias = checked_array("logit_bias", 0.0 if logit_bias is None else logit_bias, Role.LOGITS)
    check_shape("logit_scale", scale, (), "()")
    check_shape("logit_bias", bias, (), "()")
    check_chunk_size(chunk_size)
    _check_axis_name(axis_name)
    batch = images.shape[0]
    out_dtype = jnp.result_type(images.dtype, texts.dtype)
    dtype = compute_dtype(jnp.result_type(out_dtype, scale.dtype, bias.dtype))
    keep = None if where is None else as_mask(where, (batch,), "the batch (B,)")
    check_shape("where", keep, (batch,), "(B,)")

    if value_checks_enabled():
        row_keep = None if keep is None else keep[:, None]
        register_value_checks("image_embeddings", Role.LOGITS, images, row_keep)
        register_value_checks("text_embeddings", Role.LOGITS, texts, row_keep)
        register_value_checks("logit_scale", Role.LOGITS, scale, None)
        register_value_checks("logit_bias", Role.LOGITS, bias, None)

    images, texts = images.astype(dtype), texts.astype(dtype)
    kept = jnp.asarray(batch, dtype)
    if keep is not None:
        # Dropped rows may hold anything (NaN padding): zeroed, they cannot reach a kept pair's gradient.
        images, texts = jnp.where(keep[:, None], images, 0), jnp.where(keep[:, None], texts, 0)
        kept = jnp.sum(keep, dtype=dtype)
    if axis_name is not None:
        kept = jax.lax.psum(kept, axis_name)
    per_row = 1 / jnp.where(kept == 0, 1, kept)
    # From the mask where there is one, so that the row scale has the rows' sharding (jax 0.7.0 rejects a select
    # between a replicated array and a sharded mask under Explicit axes).
    row_scale = jnp.full((batch,), per_row, dtype) if keep is None else jnp.where(keep, per_row, 0).astype(dtype)
    rows = chunk_size or _ROWS
    if isinstance(batch, int):  # else a symbolic B (jax.export): blocks of the static size, the last padded
        rows = max(min(rows, batch), 1)
    text_groups = 1
    if axis_name is None:
        text_groups = _chunks.groups_of(batch, shards_along(texts, 0), devices_that_could_shard())
    config = _Config(rows, chunk_size, text_groups, precision, dtype, axis_name)
    scale, bias = scale.astype(dtype), bias.astype(dtype)
    if axis_name is None:
        total = functools.partial(_total, config)
        return with_auto_axes(total, images, texts, scale, bias, row_scale, keep).astype(out_dtype)
    scale, bias = _chunks.vary_together((scale, bias), images, texts)
    share = _total(config, images, texts, scale, bias, row_scale, keep)
    return jax.lax.psum(share, axis_name).astype(out_dtype)
