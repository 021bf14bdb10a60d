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


def _smoothed(y: float, label_smoothing: float) -> mpmath.mpf:
    s = _mpf(label_smoothing)
    return _mpf(y) * (1 - s) + s / 2


def bce_with_logits(x, y, *, pos_weight=1.0, label_smoothing=0.0):
    """Loss, d/dlogits and the soft-label gradient scale max(|grad|, sigmoid(x), |y|), elementwise."""
    loss, grad, scale = [], [], []
    pw = _mpf(pos_weight)
    for xi, yi in zip(np.ravel(x).tolist(), np.ravel(y).tolist(), strict=True):
        ys = _smoothed(yi, label_smoothing)
        loss.append(float(pw * ys * _softplus(-xi) + (1 - ys) * _softplus(xi)))
        g = -pw * ys * _sigmoid(-xi) + (1 - ys) * _sigmoid(xi)
        grad.append(float(g))
        scale.append(float(max(abs(g), _sigmoid(xi), abs(ys))))
    shape = np.shape(x)
    return tuple(np.reshape(np.array(v), shape) for v in (loss, grad, scale))


def eps_error(got, ref, scale=None, *, dtype) -> np.ndarray:
    """|got - ref| / scale in units of the dtype's epsilon; 0 where the reference is below the smallest normal
    number (XLA may flush subnormals to zero, and the contract does not count those errors)."""
    info = np.finfo(dtype)
    ref = np.asarray(ref, np.float64)
    scale = np.abs(ref) if scale is None else np.asarray(scale, np.float64)
    got = np.asarray(got, np.float64)
    counted = scale >= info.tiny
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.where(counted, np.abs(got - ref) / np.where(counted, scale, 1.0), 0.0) / info.eps
    return np.where(np.isnan(got) & counted, np.inf, error)
