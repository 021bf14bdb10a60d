"""jaxbce: numerically exact, fast binary cross-entropy losses for JAX.

Every function is pure, jit-compiled, vmap-able and differentiable to any order in every array argument.
"""

from jaxbce._losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    binary_entropy,
    binary_kl_divergence,
    sigmoid_focal_loss,
)
from jaxbce._pipeline import checked, value_checks

__version__ = "0.1.0"

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_entropy",
    "binary_kl_divergence",
    "checked",
    "sigmoid_focal_loss",
    "value_checks",
]
