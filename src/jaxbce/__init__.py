"""jaxbce: numerically exact, fast binary cross-entropy losses for JAX.

Every function is pure, jit-compiled and vmap-able. The elementwise losses are differentiable to any order in
every array argument, with derivatives of orders 1 to 3 finite over the whole range of logits, except
``binary_cross_entropy``'s gradient in ``probs``, which is PyTorch's (finite on all of [0, 1], but not the
derivative of the clamped value where a clamp is active).
``linear_binary_cross_entropy`` (the BCE fused with the last matmul) is differentiable in reverse mode, to
first order, in its parameters.
"""

from jaxbce._contrastive import sigmoid_contrastive_loss
from jaxbce._linear import linear_asymmetric_loss, linear_binary_cross_entropy, linear_sigmoid_focal_loss
from jaxbce._losses import (
    asymmetric_loss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_entropy,
    binary_kl_divergence,
    sigmoid_focal_loss,
)
from jaxbce._predictions import linear_top_k, ndcg_at_k, precision_at_k, propensity_scores
from jaxbce._update import linear_binary_cross_entropy_update, linear_update
from jaxbce._value_checks import checked, value_checks
from jaxbce._weights import class_balanced_weights, pos_weight_from_counts

__version__ = "0.3.0"

__all__ = [
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_entropy",
    "binary_kl_divergence",
    "checked",
    "class_balanced_weights",
    "linear_asymmetric_loss",
    "linear_binary_cross_entropy",
    "linear_binary_cross_entropy_update",
    "linear_sigmoid_focal_loss",
    "linear_top_k",
    "linear_update",
    "ndcg_at_k",
    "pos_weight_from_counts",
    "precision_at_k",
    "propensity_scores",
    "sigmoid_contrastive_loss",
    "sigmoid_focal_loss",
    "value_checks",
]
