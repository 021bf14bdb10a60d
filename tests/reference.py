"""The references the tests compare jaxbce with, in one module:

- high-precision values (mpmath, 50 significant digits) for the accuracy tests and ``bench/accuracy.py``;
- float64 closed forms (NumPy and scipy.special, written independently of the package) for the property tests'
  many points and for the fused loss's gradients;
- the materialised computations that the fused losses are defined to equal (the contract's definitions).

The mpmath functions take the exact values of the floating-point inputs (float32 or float64 numbers, converted
without rounding) and returns float64 arrays of the mathematically exact results rounded once, together with
the scale that the contract measures errors against. Used by the accuracy tests and by ``bench/accuracy.py``.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import scipy.special

import jaxbce

mpmath.mp.dps = 50
_mpf = mpmath.mpf


def logit_grid(dtype, *, dense: int = 2001, log_points: int = 1200, tail: int = 1201) -> np.ndarray:
    """Logits over [-1e4, 1e4]: dense near 0, log-spaced in magnitude, and dense through both tails."""
    magnitudes = np.geomspace(1e-7, 1e4, log_points)
    grid = np.concatenate(
        [
            np.linspace(-3, 3, dense),
            magnitudes,
            -magnitudes,
            np.linspace(-120, 120, tail),  # through the saturated tails of float32 and float64
            [0.0, 1.0, -1.0, 1e4, -1e4],
        ]
    )
    return np.unique(grid.astype(dtype))


@functools.cache
def _softplus(x: float) -> mpmath.mpf:
    return mpmath.log1p(mpmath.exp(_mpf(x)))


@functools.cache
def _sigmoid(x: float) -> mpmath.mpf:
    return 1 / (1 + mpmath.exp(-_mpf(x)))


def sigmoid_exact(x: float) -> mpmath.mpf:
    """sigmoid(x) at 50 digits."""
    return _sigmoid(float(x))


def _smoothed(y: float, label_smoothing: float) -> mpmath.mpf:
    s = _mpf(label_smoothing)
    return _mpf(y) * (1 - s) + s / 2


def bce_with_logits(x, y, *, pos_weight=1.0, label_smoothing=0.0, poly_epsilon=0.0):
    """Loss, d/dlogits and the soft-label gradient scale max(|grad|, sigmoid(x), |y|), elementwise; with
    ``poly_epsilon``, Poly-1's eps * (1 - p_t) added (and the size of its derivative to the scale)."""
    loss, grad, scale = [], [], []
    pw, eps = _mpf(pos_weight), _mpf(poly_epsilon)
    for xi, yi in zip(np.ravel(x).tolist(), np.ravel(y).tolist(), strict=True):
        ys = _smoothed(yi, label_smoothing)
        poly = eps * (ys * _sigmoid(-xi) + (1 - ys) * _sigmoid(xi))
        d_poly = eps * (1 - 2 * ys) * _sigmoid(xi) * _sigmoid(-xi)
        loss.append(float(pw * ys * _softplus(-xi) + (1 - ys) * _softplus(xi) + poly))
        g = -pw * ys * _sigmoid(-xi) + (1 - ys) * _sigmoid(xi) + d_poly
        grad.append(float(g))
        scale.append(float(max(abs(g), _sigmoid(xi), abs(ys)) + abs(d_poly)))
    shape = np.shape(x)
    return tuple(np.reshape(np.array(v), shape) for v in (loss, grad, scale))


def eps_error(got, ref, scale=None, *, dtype) -> np.ndarray:
    """|got - ref| / scale in units of the dtype's epsilon (scale defaults to |ref|).

    As the contract says, errors below the smallest normal number do not count (XLA may flush subnormals to
    zero): an element counts where its scale and its absolute error are both at least the smallest normal."""
    info = np.finfo(dtype)
    ref = np.asarray(ref, np.float64)
    scale = np.abs(ref) if scale is None else np.asarray(scale, np.float64)
    got = np.asarray(got, np.float64)
    counted = (scale >= info.tiny) & ~(np.abs(got - ref) < info.tiny)
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.where(counted, np.abs(got - ref) / np.where(counted, scale, 1.0), 0.0) / info.eps
    return np.where(np.isnan(got) & counted, np.inf, error)


def _elementwise(function, *arrays):
    """Apply a scalar mpmath function returning a tuple, giving a tuple of float64 arrays of the input shape."""
    shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
    flat = [np.broadcast_to(a, shape).ravel().tolist() for a in arrays]
    rows = [function(*values) for values in zip(*flat, strict=True)]
    return tuple(np.reshape(np.array([float(v) for v in column]), shape) for column in zip(*rows, strict=True))


def bce_with_probabilities(p, y):
    """PyTorch BCELoss value, its documented gradient (p - y) / max(p (1 - p), 1e-12), and the size
    max(p, y) / max(p (1 - p), 1e-12) of the terms that gradient is the difference of."""

    def one(p, y):
        p, y = _mpf(p), _mpf(y)
        log_p = max(mpmath.log(p), -100) if p > 0 else _mpf(-100)
        log_not_p = max(mpmath.log1p(-p), -100) if p < 1 else _mpf(-100)
        floor = max(p * (1 - p), _mpf("1e-12"))
        return -(y * log_p + (1 - y) * log_not_p), (p - y) / floor, max(p, y) / floor

    return _elementwise(one, p, y)


def sigmoid_focal(x, y, *, alpha, gamma, label_smoothing=0.0, poly_epsilon=0.0):
    """Focal loss value, d/dlogits and the soft-label gradient scale, with 1 - p_t = y_s sigmoid(-x) +
    (1 - y_s) sigmoid(x) for the smoothed label y_s; with ``poly_epsilon``, Poly-1's eps * (1 - p_t)**(gamma + 1)
    added."""

    def one(x, y):
        y = _smoothed(y, label_smoothing)
        q = y * _sigmoid(-x) + (1 - y) * _sigmoid(x)
        dq = (1 - 2 * y) * _sigmoid(x) * _sigmoid(-x)
        ce = y * _softplus(-x) + (1 - y) * _softplus(x)
        # sigmoid(x) - y, formed without 1 - sigmoid(-x) rounding to 1 at 50 digits (x > 115).
        dce = _sigmoid(x) - y if x <= 0 else (1 - y) - _sigmoid(-x)
        alpha_t = 1 if alpha is None else alpha * y + (1 - _mpf(alpha)) * (1 - y)
        factor = q**gamma
        d_factor = gamma * q ** (gamma - 1) * dq if gamma else 0
        # The gradient is a difference of terms; scale: the sum of their sizes (sigmoid(x) and y for dce).
        scale = alpha_t * (abs(d_factor * ce) + factor * max(abs(dce), _sigmoid(x), y))
        poly, d_poly = poly_epsilon * q ** (gamma + 1), poly_epsilon * (gamma + 1) * q**gamma * dq
        return alpha_t * factor * ce + poly, alpha_t * (d_factor * ce + factor * dce) + d_poly, scale + abs(d_poly)

    return _elementwise(one, x, y)


def binary_entropy(x):
    """Entropy of Bernoulli(sigmoid(x)) in nats and its derivative -x sigmoid(x) sigmoid(-x)."""

    def one(x):
        p, not_p = _sigmoid(x), _sigmoid(-x)
        return -p * mpmath.log(p) - not_p * mpmath.log(not_p), -_mpf(x) * p * not_p

    return _elementwise(one, x)


def binary_kl_divergence(x, t):
    """KL(sigmoid(t) || sigmoid(x)), its d/dx = sigmoid(x) - sigmoid(t) and d/dt = -sigmoid'(t) (x - t)."""

    def one(x, t):
        q = _sigmoid(t)
        kl = _softplus(x) - _softplus(t) - q * (_mpf(x) - _mpf(t))
        return kl, _sigmoid(x) - q, -q * _sigmoid(-t) * (_mpf(x) - _mpf(t))

    return _elementwise(one, x, t)


def _one_minus_p_t(x, ys):
    # ys sigmoid(-x) + (1 - ys) sigmoid(x), each sigmoid formed directly (1 - sigmoid(x) would round to 0 at
    # 50 digits for x > 115).
    x = _mpf(x)
    return ys / (1 + mpmath.exp(x)) + (1 - ys) / (1 + mpmath.exp(-x))


def _bce_with_logits_scalar(x, y, pos_weight=None, *, label_smoothing=0.0, poly_epsilon=0.0):
    ys = _smoothed(y, label_smoothing) if label_smoothing else _mpf(y)
    pw = 1 if pos_weight is None else _mpf(pos_weight)
    ce = pw * ys * mpmath.log1p(mpmath.exp(-_mpf(x))) + (1 - ys) * mpmath.log1p(mpmath.exp(_mpf(x)))
    return ce + _mpf(poly_epsilon) * _one_minus_p_t(x, ys)


def _bce_with_probabilities_scalar(p, y, pos_weight=None, *, label_smoothing=0.0):
    ys, p = _smoothed(y, label_smoothing) if label_smoothing else _mpf(y), _mpf(p)
    pw = 1 if pos_weight is None else _mpf(pos_weight)
    log_p = max(mpmath.log(p), -100) if p > 0 else _mpf(-100)
    log_not_p = max(mpmath.log1p(-p), -100) if p < 1 else _mpf(-100)
    return -(pw * ys * log_p + (1 - ys) * log_not_p)


def _sigmoid_focal_scalar(x, y, alpha=0.25, *, gamma, label_smoothing=0.0, poly_epsilon=0.0):
    x, ys = _mpf(x), _smoothed(y, label_smoothing) if label_smoothing else _mpf(y)
    q = _one_minus_p_t(x, ys)
    alpha_t = 1 if alpha is None else _mpf(alpha) * ys + (1 - _mpf(alpha)) * (1 - ys)
    ce = ys * mpmath.log1p(mpmath.exp(-x)) + (1 - ys) * mpmath.log1p(mpmath.exp(x))
    return alpha_t * q**gamma * ce + _mpf(poly_epsilon) * q ** (gamma + 1)


def _asymmetric_scalar(x, y, pos_weight=None, *, gamma_pos=0.0, gamma_neg=4.0, clip=0.05):
    # The contract's formula: pw y (1 - p)**gamma_pos log(1/p) + (1 - y) p_m**gamma_neg log(1/(1 - p_m)), with
    # 1 - p = sigmoid(-x) formed directly (not by subtraction, which rounds to 0 at 50 digits for x > 115).
    x, y = _mpf(x), _mpf(y)
    pw = 1 if pos_weight is None else _mpf(pos_weight)
    p, not_p = 1 / (1 + mpmath.exp(-x)), 1 / (1 + mpmath.exp(x))
    positive = not_p**gamma_pos * mpmath.log1p(mpmath.exp(-x))
    if clip:
        p_m = max(p - _mpf(clip), 0)
        negative = p_m**gamma_neg * -mpmath.log(not_p + _mpf(clip)) if p_m > 0 else _mpf(0)
    else:
        negative = p**gamma_neg * mpmath.log1p(mpmath.exp(x))
    return pw * y * positive + (1 - y) * negative


def asymmetric(x, y, *, gamma_pos=0.0, gamma_neg=4.0, clip=0.05):
    """ASL value and its d/dlogits from the formula's derivative (p' = p (1 - p), d(-log(1 - p_m)) = p' / (1 - p_m)),
    with the size of the two terms' derivatives as the scale."""

    def one(x, y):
        x, y = _mpf(x), _mpf(y)
        p, s = 1 / (1 + mpmath.exp(-x)), 1 / (1 + mpmath.exp(x))
        d_positive = -(s**gamma_pos) * (gamma_pos * p * mpmath.log1p(mpmath.exp(-x)) + s)
        p_m = p - _mpf(clip)
        if p_m <= 0:
            d_negative = _mpf(0)
        else:
            v = s + _mpf(clip)
            # -log(v), as softplus(x) without a clip (log(s) rounds to 0 at 50 digits for x < -115).
            neg_log_v = mpmath.log1p(mpmath.exp(x)) if clip == 0 else -mpmath.log(v)
            lower = p_m ** (gamma_neg - 1) * gamma_neg * neg_log_v if gamma_neg else 0
            d_negative = p * s * (lower + p_m**gamma_neg / v)
        value = _asymmetric_scalar(x, y, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
        return value, y * d_positive + (1 - y) * d_negative, y * abs(d_positive) + (1 - y) * abs(d_negative)

    return _elementwise(one, x, y)


def _binary_entropy_scalar(x):
    p, not_p = 1 / (1 + mpmath.exp(-_mpf(x))), 1 / (1 + mpmath.exp(_mpf(x)))
    return -p * mpmath.log(p) - not_p * mpmath.log(not_p)


def _binary_kl_divergence_scalar(x, t):
    x, t = _mpf(x), _mpf(t)
    q = 1 / (1 + mpmath.exp(-t))
    return mpmath.log1p(mpmath.exp(x)) - mpmath.log1p(mpmath.exp(t)) - q * (x - t)


# The losses as scalar functions of mpmath numbers (arrays in the registry's order, then keyword options), for
# derivatives of any order by mpmath.diff; keyed by the registry's ``reference`` names.
SCALAR = {
    "bce_with_logits": _bce_with_logits_scalar,
    "bce_with_probabilities": _bce_with_probabilities_scalar,
    "sigmoid_focal": _sigmoid_focal_scalar,
    "asymmetric": _asymmetric_scalar,
    "binary_entropy": _binary_entropy_scalar,
    "binary_kl_divergence": _binary_kl_divergence_scalar,
}


def value(name, *arrays, **options):
    """The loss ``name`` of ``SCALAR`` elementwise over ``arrays`` (broadcast; None for an absent optional one),
    as float64."""
    return _elementwise(lambda *values: (SCALAR[name](*values, **options),), *arrays)[0]


def derivative(name, arrays, argnum, order, options):
    """The ``order``-th derivative of the loss ``name`` in its array argument ``argnum`` at ``arrays`` (a list of
    floats, None for an absent optional one), by mpmath.diff at 50 digits; one-sided at the ends of [0, 1]
    for labels and probabilities (``argnum`` > 0 or a probability)."""
    function = SCALAR[name]

    def along(v):
        values = list(arrays)
        values[argnum] = v
        return function(*values, **options)

    point = _mpf(arrays[argnum])
    bounded = name == "bce_with_probabilities" or (argnum == 1 and name != "binary_kl_divergence")
    if bounded and point in (0, 1):
        # One-sided, with a step far below the smallest float64 (q = 1 - p_t can be 1e-308 at a hard label,
        # and the stencil has to stay where q changes little): 400-digit steps at 1300 digits.
        with mpmath.workdps(1300):
            step = _mpf(10) ** -400
            return +mpmath.diff(along, point, order, h=step, direction=1 if point == 0 else -1)
    return mpmath.diff(along, point, order)


# float64 closed forms.


def _softplus64(x):
    return -scipy.special.log_expit(-x)


def _sigmoid64(x):
    return scipy.special.expit(x)  # exact to an ulp in float64; exp(-softplus(-x)) would lose |x| * eps


class Float64Reference(NamedTuple):
    loss: np.ndarray
    grad: np.ndarray  # in the first argument
    grad_size: np.ndarray  # the size of the gradient's terms, which its error is measured against
    loss_size: np.ndarray  # the size of the loss's terms (|loss| unless a negative Poly-1 term cancels)
    loss_floor: np.ndarray | float  # the reference's own error where its form cancels (KL)


def float64_loss_and_gradient(name, options, x, y, weight, pos_weight) -> Float64Reference:
    """The float64 elementwise loss and its derivative in the first argument, before the mask, with the sizes that
    their errors are measured against. For the property tests' many points, where mpmath would be slow."""
    options = dict(options)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    s = options.get("label_smoothing", 0.0)
    ys = y * (1 - s) + s / 2
    poly = d_poly = 0.0
    loss_floor = 0.0
    if name in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss"):
        # Poly-1 (Leng et al.): eps (1 - p_t)**(gamma + 1), gamma = 0 for the BCE; not scaled by pos_weight or alpha_t.
        q = ys * _sigmoid64(-x) + (1 - ys) * _sigmoid64(x)
        dq = (1 - 2 * ys) * _sigmoid64(x) * _sigmoid64(-x)
        epsilon, power = options.get("poly_epsilon", 0.0), options.get("gamma", 0.0) + 1
        poly, d_poly = epsilon * q**power, epsilon * power * q ** (power - 1) * dq
    if name == "binary_cross_entropy_with_logits":
        loss = pos_weight * ys * _softplus64(-x) + (1 - ys) * _softplus64(x)
        grad = (1 - ys) * _sigmoid64(x) - pos_weight * ys * _sigmoid64(-x)
        size = pos_weight * ys * _sigmoid64(-x) + (1 - ys) * _sigmoid64(x)
    elif name == "binary_cross_entropy":
        with np.errstate(divide="ignore"):
            log_p, log_not_p = np.maximum(np.log(x), -100), np.maximum(np.log1p(-x), -100)
        loss = -(pos_weight * ys * log_p + (1 - ys) * log_not_p)
        # PyTorch's gradient: the denominator p (1 - p) floored at 1e-12.
        floor = np.maximum(x * (1 - x), 1e-12)
        positive, negative = pos_weight * ys * (1 - x), (1 - ys) * x
        grad, size = (negative - positive) / floor, np.maximum(negative, positive) / floor
    elif name == "sigmoid_focal_loss":
        alpha, gamma = options["alpha"], options["gamma"]
        ce = ys * _softplus64(-x) + (1 - ys) * _softplus64(x)
        alpha_t = 1.0 if alpha is None else alpha * ys + (1 - alpha) * (1 - ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            d_factor = np.where(q > 0, gamma * q ** (gamma - 1), 0.0) if gamma else 0.0
        factor = q**gamma
        loss = alpha_t * factor * ce
        terms = (d_factor * dq * ce, factor * (_sigmoid64(x) - ys))
        grad = alpha_t * (terms[0] + terms[1])
        size = alpha_t * (np.abs(terms[0]) + factor * np.maximum(_sigmoid64(x), ys))
    elif name == "binary_entropy":
        weight = 1.0  # binary_entropy takes no weight
        p, not_p = _sigmoid64(x), _sigmoid64(-x)  # not 1 - p, which cancels in float64 too
        loss = p * _softplus64(-x) + not_p * _softplus64(x)
        grad = -x * p * _sigmoid64(-x)
        size = np.abs(grad)
    elif name == "asymmetric_loss":
        loss, grad, size = _asymmetric64(x, ys, pos_weight, **options)
    elif name == "binary_kl_divergence":
        t = y
        loss = _softplus64(x) - _softplus64(t) - _sigmoid64(t) * (x - t)
        grad = _sigmoid64(x) - _sigmoid64(t)
        size = np.maximum(_sigmoid64(x), _sigmoid64(t))
        # the float64 textbook form cancels: its own error is ~eps64 * (size of its terms)
        loss_floor = 4 * np.finfo(np.float64).eps * (_softplus64(x) + _softplus64(t) + np.abs(_sigmoid64(t) * (x - t)))
    else:
        raise NotImplementedError(f"no float64 reference for {name} here")
    loss_size = np.abs(loss) + np.abs(poly)
    loss, grad, size = loss + poly, grad + d_poly, np.maximum(size, np.abs(grad)) + np.abs(d_poly)
    return Float64Reference(*(weight * a for a in (loss, grad, size, loss_size, loss_floor)))


def _asymmetric64(x, y, pos_weight, gamma_pos, gamma_neg, clip):
    """ASL and its logits derivative in float64; p - clip as (1 - clip) p (1 - exp(x0 - x)), x0 = logit(clip),
    which does not cancel near the clip."""
    p, s = _sigmoid64(x), _sigmoid64(-x)
    positive = s**gamma_pos * _softplus64(-x)
    d_positive = -(s**gamma_pos) * (gamma_pos * p * _softplus64(-x) + s)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if clip:
            x0 = np.log(clip / (1 - clip))
            kept = x > x0
            p_m = np.where(kept, (1 - clip) * p * -np.expm1(np.minimum(x0 - x, 0)), 0.0)
            neg_log_v = np.where(p_m < 0.5, -np.log1p(-p_m), -np.log(s + clip))
            negative = np.where(kept, p_m**gamma_neg * neg_log_v, 0.0)
            lower = gamma_neg * p_m ** (gamma_neg - 1) * neg_log_v if gamma_neg else 0.0
            d_negative = np.where(kept, p * s * (lower + p_m**gamma_neg / (s + clip)), 0.0)
        else:
            negative = p**gamma_neg * _softplus64(x)
            lower = gamma_neg * p ** (gamma_neg - 1) * _softplus64(x) if gamma_neg else 0.0
            d_negative = p * s * lower + p**gamma_neg * p
    loss = pos_weight * y * positive + np.where(y == 1, 0.0, (1 - y) * negative)
    grad = pos_weight * y * d_positive + (1 - y) * d_negative
    size = pos_weight * y * np.abs(d_positive) + (1 - y) * np.abs(d_negative)
    return loss, grad, size


def linear_bce_float64(p, labels, *, where, pos_weight, weight, reduction):
    """The fused BCE's loss and gradients in float64 NumPy, from the analytic derivative of the BCE: ``p`` holds
    ``features`` (B, D), ``kernel`` (D, C) and ``bias``; ``weight`` is per example (B, 1), ``where`` (B,)."""
    f, k, b = (p[n].astype(np.float64) for n in ("features", "kernel", "bias"))
    y = labels.astype(np.float64)
    pw = np.ones(k.shape[1]) if pos_weight is None else pos_weight.astype(np.float64)
    z = f @ k + b
    softplus = np.logaddexp(0, z)
    loss = pw * y * (softplus - z) + (1 - y) * softplus
    scale = np.ones(f.shape[0]) if weight is None else weight[:, 0].astype(np.float64)
    if where is not None:
        scale = np.where(where, scale, 0)
    kept = f.shape[0] if where is None else where.sum()
    scale = scale / {"sum": 1, "mean": kept * k.shape[1], "batchmean": kept}[reduction]
    d_logits = scale[:, None] * ((pw * y + 1 - y) / (1 + np.exp(-z)) - pw * y)
    value = np.sum(scale[:, None] * loss)
    return value, {"features": d_logits @ k.T, "kernel": f.T @ d_logits, "bias": d_logits.sum(0)}


# The materialised definitions of the fused losses.


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
