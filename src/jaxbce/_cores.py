"""The elementwise cores of the sigmoid family, built from a loss's static options: one builder per loss, used by
its elementwise form (``_losses``) and by its fused form (``_linear``, ``_update``), so that both evaluate the
same function with the same ``custom_jvp`` rules.

A core is ``core(logits, labels, per_class)``: the per-element loss in the compute dtype, where ``per_class`` is
the loss's third array (``pos_weight``; the focal loss's ``alpha``), or None. Each builder checks its options and
raises the errors that name them.
"""

import functools
import math
from collections.abc import Callable

import jax

from jaxbce import _asymmetric, _elementwise, _focal
from jaxbce._arguments import check_fraction, check_real, is_python_number

Core = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


def bce(label_smoothing: float = 0.0, poly_epsilon: float = 0.0) -> Core:
    """``pw y softplus(-x) + (1 - y) softplus(x)`` with smoothed labels, plus Poly-1's ``eps (1 - p_t)``."""
    label_smoothing = check_fraction("label_smoothing", label_smoothing)
    poly_epsilon = check_real("poly_epsilon", poly_epsilon)
    core = functools.partial(_elementwise.bce_with_logits, label_smoothing=label_smoothing)
    return _plus_poly1(core, poly_epsilon, 1.0, label_smoothing)


def sigmoid_focal(gamma: float = 2.0, label_smoothing: float = 0.0, poly_epsilon: float = 0.0) -> Core:
    """``alpha_t (1 - p_t)**gamma bce``, plus Poly-1's ``eps (1 - p_t)**(gamma + 1)``; ``per_class`` is alpha."""
    gamma = check_gamma("gamma", gamma)
    label_smoothing = check_fraction("label_smoothing", label_smoothing)
    poly_epsilon = check_real("poly_epsilon", poly_epsilon)
    core = functools.partial(_focal.sigmoid_focal, gamma=gamma, label_smoothing=label_smoothing)
    return _plus_poly1(core, poly_epsilon, gamma + 1.0, label_smoothing)


def asymmetric(
    gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05, stop_focusing_gradient: bool = False
) -> Core:
    """ASL (Ridnik et al.); ``per_class`` is pos_weight."""
    gamma_pos, gamma_neg = check_gamma("gamma_pos", gamma_pos), check_gamma("gamma_neg", gamma_neg)
    clip = check_fraction("clip", clip)
    if clip == 1:
        raise ValueError("clip must be in [0, 1), got 1.0")
    if not isinstance(stop_focusing_gradient, bool):
        raise TypeError(f"stop_focusing_gradient must be a bool, got {stop_focusing_gradient!r}")
    return functools.partial(
        _asymmetric.asymmetric,
        gamma_pos=gamma_pos,
        gamma_neg=gamma_neg,
        clip=clip,
        stop_focusing_gradient=stop_focusing_gradient,
    )


def check_gamma(name: str, gamma) -> float:
    if not is_python_number(gamma) or not gamma >= 0 or not math.isfinite(gamma):
        raise ValueError(f"{name} must be a finite Python float >= 0, got {gamma!r}")
    return float(gamma)


def check_alpha(alpha) -> None:
    """A static ``alpha`` now (a Python number or None); an array's range is a value check."""
    if alpha is None or is_python_number(alpha):
        if is_python_number(alpha) and alpha < 0:
            raise ValueError(
                f"alpha must be in [0, 1] or None, got {alpha}; for no class weighting (torchvision's alpha=-1, "
                "optax's default) pass alpha=None"
            )
        check_fraction("alpha", alpha, allow_none=True)


def _plus_poly1(core, poly_epsilon: float, exponent: float, label_smoothing: float) -> Core:
    """``core`` plus Poly-1's ``poly_epsilon * (1 - p_t)**exponent``, or ``core`` itself for ``poly_epsilon = 0``."""
    if not poly_epsilon:
        return core
    poly = functools.partial(_focal.accurate_q_power, exponent=exponent, label_smoothing=label_smoothing)
    return lambda x, y, per_class: core(x, y, per_class) + poly_epsilon * poly(x, y)
