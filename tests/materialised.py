"""The materialised computations that the fused losses are defined to equal (the contract's definitions):
the elementwise loss of the whole ``features @ kernel + bias`` logits, and big_vision's dense SigLIP loss."""

import jax
import jax.numpy as jnp

import jaxbce


def linear_bce(
    features, kernel, bias, pos_weight, weight, *, labels, where=None, reduction, label_smoothing=0.0, ignore_label=None
):
    """``binary_cross_entropy_with_logits`` of the logits, with ``weight`` as given (it broadcasts against the
    logits) and the per-example ``where`` as ``(..., 1)``; ``"none"`` is the sum over classes per example."""
    logits = features @ kernel + (0 if bias is None else bias)
    return jaxbce.binary_cross_entropy_with_logits(
        logits,
        labels,
        pos_weight=pos_weight,
        weight=weight,
        where=None if where is None else where[..., None],
        label_smoothing=label_smoothing,
        ignore_label=ignore_label,
        reduction="sum" if reduction == "none" else reduction,
        axis=-1 if reduction == "none" else None,
    )


def dense_siglip(images, texts, logit_scale, logit_bias, where=None):
    """big_vision's dense form (siglip.py): log_sigmoid of the full B x B logits with labels 2 I - 1, summed
    over texts and averaged over images; ``where`` drops rows, columns and the count."""
    logits = logit_scale * images @ texts.T + logit_bias
    labels = 2 * jnp.eye(images.shape[0]) - 1
    terms = -jax.nn.log_sigmoid(labels * logits)
    if where is None:
        return jnp.sum(terms) / images.shape[0]
    return jnp.sum(jnp.where(where[:, None] & where[None, :], terms, 0)) / jnp.sum(where)
