"""High-precision reference values (mpmath, 50 significant digits) for the jaxbce losses.

Every function takes the exact values of the floating-point inputs (float32 or float64 numbers, converted
without rounding) and returns float64 arrays of the mathematically exact results rounded once, together with
the scale that the contract measures errors against. Used by the accuracy tests and by ``bench/accuracy.py``.
"""

import functools

import mpmath
import numpy as np

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
