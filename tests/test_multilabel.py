"""The multi-label kit: ``reduction="batchmean"`` and ``ignore_label`` on every registered loss (driven by the
registry), ``pos_weight`` on ``binary_cross_entropy``, and the class-balance helpers. References: float64 NumPy
formulas and 50-digit mpmath (tests/reference.py), written independently of the package."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from jax.experimental import checkify
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import devices
import jaxbce
import reference
from jax_compat import enable_x64
from jaxbce._arguments import Role
from loss_table import LOSSES

NAMES = list(LOSSES)
WITH_LABELS = [name for name, loss in LOSSES.items() if any(role is Role.LABELS for _, role in loss.arrays)]


def _inputs(name, shape=(4, 6), seed=0):
    """The positional arrays of a loss (probabilities in (0, 1), labels in [0, 1], logits normal)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for _, role in LOSSES[name].arrays:
        if role in (Role.NON_NEGATIVE, Role.FRACTION):
            continue
        if role is Role.LOGITS:
            arrays.append(rng.normal(scale=3, size=shape).astype(np.float32))
        elif role is Role.PROBABILITIES:
            arrays.append(rng.uniform(0.01, 0.99, shape).astype(np.float32))
        else:
            arrays.append((rng.uniform(size=shape) > 0.5).astype(np.float32))
    return arrays


@pytest.mark.parametrize("name", NAMES)
def test_batchmean_is_the_sum_over_kept_examples(name):
    function = LOSSES[name].function
    arrays = _inputs(name)
    where = np.ones((4, 6), bool)
    where[1] = False  # a whole example dropped
    where[2, :3] = False  # part of one
    total = function(*arrays, where=where, reduction="sum")
    np.testing.assert_allclose(function(*arrays, where=where, reduction="batchmean"), total / 3, rtol=1e-6)
    np.testing.assert_allclose(
        function(*arrays, reduction="batchmean"), function(*arrays, reduction="sum") / 4, rtol=1e-6
    )
    nothing = np.zeros((4, 6), bool)
    value, grad = jax.value_and_grad(lambda x: function(x, *arrays[1:], where=nothing, reduction="batchmean"))(
        arrays[0]
    )
    assert value == 0
    assert not np.any(grad)


@pytest.mark.parametrize("name", NAMES)
def test_batchmean_rejects_axis_and_scalars(name):
    function = LOSSES[name].function
    arrays = _inputs(name)
    with pytest.raises(ValueError, match="batchmean"):
        function(*arrays, axis=-1, reduction="batchmean")
    with pytest.raises(ValueError, match="leading batch axis"):
        function(*(a[0, 0] for a in arrays), reduction="batchmean")


def test_batchmean_under_sharding_equals_one_device():
    mesh = devices.mesh(jax.sharding.AxisType.Auto, shape=(8,), names=("data",))
    logits, labels = _inputs("binary_cross_entropy_with_logits", shape=(16, 5))
    where = np.random.default_rng(1).uniform(size=(16, 5)) > 0.6
    where[3] = False
    loss = functools.partial(jaxbce.binary_cross_entropy_with_logits, reduction="batchmean")
    expected = jax.value_and_grad(loss)(logits, labels, where=where)
    sharding = NamedSharding(mesh, P("data"))
    placed = [jax.device_put(a, sharding) for a in (logits, labels, where)]
    got = jax.jit(jax.value_and_grad(lambda x, y, m: loss(x, y, where=m)))(*placed)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", WITH_LABELS)
@pytest.mark.parametrize("ignore_label", [-1, 255])
def test_ignore_label_masks_as_where_does(name, ignore_label):
    function = LOSSES[name].function
    first, labels = _inputs(name)
    ignored = np.random.default_rng(2).uniform(size=labels.shape) < 0.3
    marked = np.where(ignored, ignore_label, labels).astype(np.float32)
    first = np.where(ignored, np.nan, first).astype(np.float32)  # ignored elements may hold anything
    for reduction in ("none", "mean", "batchmean"):
        ignoring = functools.partial(function, ignore_label=ignore_label, reduction=reduction)
        masking = functools.partial(function, where=~ignored, reduction=reduction)
        got = jax.value_and_grad(lambda x, f=ignoring: jnp.sum(f(x, marked)))(first)
        expected = jax.value_and_grad(lambda x, f=masking: jnp.sum(f(x, labels)))(first)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        assert np.all(np.isfinite(got[1]))
        assert not np.any(got[1][ignored])


@pytest.mark.parametrize("name", WITH_LABELS)
def test_ignored_labels_are_exempt_from_the_value_check(name):
    function = LOSSES[name].function
    first, labels = _inputs(name)
    marked = labels.copy()
    marked[0, 0] = -1
    jaxbce.checked(function)(first, marked, ignore_label=-1)  # does not raise
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels must be in \[0, 1\]; got -1.0 at index \[0 0\]"):
        jaxbce.checked(function)(first, marked)


def test_ignore_label_with_integer_labels_and_bad_values():
    logits = np.zeros((2, 3), np.float32)
    labels = np.array([[0, 1, 255], [255, 255, 1]], np.uint8)
    got = jaxbce.binary_cross_entropy_with_logits(logits, labels, ignore_label=255, reduction="sum")
    np.testing.assert_allclose(got, 3 * np.log(2), rtol=1e-6)
    with pytest.raises(TypeError, match="ignore_label must be None or a Python int or float"):
        jaxbce.binary_cross_entropy_with_logits(logits, labels, ignore_label="255")


# pos_weight on binary_cross_entropy


def test_probability_bce_pos_weight_against_mpmath():
    p = np.array([1e-6, 0.1, 0.3, 0.5, 0.7, 0.999, 0.0, 1.0], np.float32)
    y = np.array([1.0, 0.0, 0.3, 1.0, 1.0, 0.2, 1.0, 0.0], np.float32)
    pw = np.array([3.0, 3.0, 0.5, 2.0, 0.25, 4.0, 3.0, 3.0], np.float32)
    value = jaxbce.binary_cross_entropy(p, y, pos_weight=pw, reduction="none")
    scalar = reference.SCALAR["bce_with_probabilities"]
    exact = [float(scalar(*map(float, v))) for v in zip(p, y, pw, strict=True)]
    np.testing.assert_array_less(reference.eps_error(value, exact, dtype=np.float32), 2.0)
    grad = jax.grad(lambda q: jnp.sum(jaxbce.binary_cross_entropy(q, y, pos_weight=pw, reduction="none")))(p)
    # The documented gradient ((1 - y) p - pw y (1 - p)) / max(p (1 - p), 1e-12), in float64.
    p64, y64, pw64 = (a.astype(np.float64) for a in (p, y, pw))
    documented = ((1 - y64) * p64 - pw64 * y64 * (1 - p64)) / np.maximum(p64 * (1 - p64), 1e-12)
    np.testing.assert_allclose(grad, documented, rtol=4e-7)


def test_probability_bce_pos_weight_matches_the_logits_form():
    rng = np.random.default_rng(3)
    x = rng.normal(scale=2, size=(5, 4)).astype(np.float32)
    y = rng.uniform(size=(5, 4)).astype(np.float32)
    pw = np.array([0.5, 1.0, 2.0, 7.0], np.float32)  # per class
    from_probs = jaxbce.binary_cross_entropy(jax.nn.sigmoid(x), y, pos_weight=pw)
    from_logits = jaxbce.binary_cross_entropy_with_logits(x, y, pos_weight=pw)
    np.testing.assert_allclose(from_probs, from_logits, rtol=2e-6)
    np.testing.assert_array_equal(
        jaxbce.binary_cross_entropy(jax.nn.sigmoid(x), y, pos_weight=1.0),
        jaxbce.binary_cross_entropy(jax.nn.sigmoid(x), y),
    )


# Class-balance helpers


def test_pos_weight_from_counts():
    positives = np.array([10, 250, 0, 1000, 1])
    got = jaxbce.pos_weight_from_counts(positives, 1000)
    np.testing.assert_allclose(got, [99.0, 3.0, 1.0, 0.0, 999.0])
    assert got.dtype == jnp.float32
    per_class_totals = np.array([20, 500, 7, 1000, 2])
    np.testing.assert_allclose(jaxbce.pos_weight_from_counts(positives, per_class_totals), [1.0, 1.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="total_counts of shape"):
        jaxbce.pos_weight_from_counts(positives, np.ones(3))
    with pytest.raises(checkify.JaxRuntimeError, match="positive_counts must be non-negative"):
        jaxbce.checked(jaxbce.pos_weight_from_counts)(np.array([-1, 2]), 10)


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.99999])
def test_class_balanced_weights_against_mpmath(beta):
    counts = np.array([0, 1, 7, 100, 5000, 123456])
    got = np.asarray(jaxbce.class_balanced_weights(counts, beta=beta))
    mpmath.mp.dps = 50
    b = mpmath.mpf(beta)
    raw = [mpmath.mpf(0) if n == 0 else (1 - b) / (1 - b ** int(n)) for n in counts]
    exact = [float(r * len(counts) / sum(raw)) for r in raw]
    assert got[0] == 0
    np.testing.assert_array_less(reference.eps_error(got[1:], exact[1:], dtype=np.float32), 8.0)
    np.testing.assert_allclose(got.sum(), len(counts), rtol=1e-6)


def test_class_balanced_weights_edge_cases():
    np.testing.assert_array_equal(jaxbce.class_balanced_weights(np.zeros(3)), np.zeros(3))
    np.testing.assert_allclose(jaxbce.class_balanced_weights(np.array([3, 50, 9000]), beta=0.0), np.ones(3))
    batched = jaxbce.class_balanced_weights(np.array([[1, 2, 3], [4, 0, 6]]), beta=0.5)
    np.testing.assert_allclose(batched.sum(-1), [3.0, 3.0], rtol=1e-6)
    for beta in (1.0, -0.1, True):
        with pytest.raises(ValueError, match="beta must be a Python float in"):
            jaxbce.class_balanced_weights(np.ones(3), beta=beta)
    with pytest.raises(ValueError, match="class axis"):
        jaxbce.class_balanced_weights(5)


# Poly-1


@pytest.mark.parametrize(
    ("reference_function", "function", "options"),
    [
        (reference.bce_with_logits, jaxbce.binary_cross_entropy_with_logits, {}),
        (reference.bce_with_logits, jaxbce.binary_cross_entropy_with_logits, {"label_smoothing": 0.1}),
        (reference.sigmoid_focal, jaxbce.sigmoid_focal_loss, {"alpha": 0.25, "gamma": 2.0}),
        (reference.sigmoid_focal, jaxbce.sigmoid_focal_loss, {"alpha": None, "gamma": 0.5}),
        (reference.sigmoid_focal, jaxbce.sigmoid_focal_loss, {"alpha": 0.25, "gamma": 4.0, "label_smoothing": 0.1}),
    ],
    ids=["bce", "bce-smoothed", "focal-2", "focal-0.5", "focal-4-smoothed"],
)
@pytest.mark.parametrize("poly_epsilon", [1.0, 2.5])
def test_poly1_value_and_gradient_against_mpmath(reference_function, function, options, poly_epsilon):
    """Poly-1 with poly_epsilon >= 0 (both terms non-negative): loss within 2 eps (relative) and gradient within
    2 eps of the contract's scale, of 50 digits, over logits in [-1e4, 1e4], hard and soft labels."""
    x = reference.logit_grid(np.float32, dense=201, log_points=120, tail=121)
    for label in (0.0, 1.0, 0.3):
        y = np.full_like(x, label)
        exact, exact_grad, scale = reference_function(x, y, **options, poly_epsilon=poly_epsilon)
        loss = functools.partial(function, **options, poly_epsilon=poly_epsilon, reduction="none")
        value = loss(x, y)
        grad = jax.grad(lambda v, y=y, loss=loss: jnp.sum(loss(v, y)))(x)
        # Where the loss and Poly-1's term are both subnormal but their sum is not (within a factor 1 + eps of
        # the smallest normal number), XLA flushes the terms to 0 before they are added: not counted, as the
        # contract does not count subnormal results.
        counted = np.abs(exact) >= (1 + poly_epsilon) * np.finfo(np.float32).tiny
        assert reference.eps_error(value, exact, dtype=np.float32)[counted].max() <= 2.0
        hard = label in (0.0, 1.0) and not options.get("label_smoothing")
        grad_error = reference.eps_error(grad, exact_grad, None if hard else scale, dtype=np.float32)
        assert grad_error[np.abs(exact_grad) >= (1 + poly_epsilon) * np.finfo(np.float32).tiny].max() <= 2.0


# Per-class alpha


def test_per_class_alpha_equals_per_column_static_alpha():
    rng = np.random.default_rng(4)
    x = rng.normal(scale=4, size=(6, 3)).astype(np.float32)
    y = rng.uniform(size=(6, 3)).astype(np.float32)
    alpha = np.array([0.1, 0.5, 0.875], np.float32)  # exact in float32, so static and traced forms agree
    got = jaxbce.sigmoid_focal_loss(x, y, alpha=alpha, gamma=1.5, reduction="none")
    for c, a in enumerate(alpha.tolist()):
        expected = jaxbce.sigmoid_focal_loss(x[:, c], y[:, c], alpha=a, gamma=1.5, reduction="none")
        np.testing.assert_allclose(got[:, c], expected, rtol=2e-7)
    # d/d alpha_c = sum over the column of (2 y - 1) (1 - p_t)**gamma bce, in float64 from the alpha-free loss.
    unweighted = np.asarray(jaxbce.sigmoid_focal_loss(x, y, alpha=None, gamma=1.5, reduction="none"), np.float64)
    grad = jax.grad(lambda a: jaxbce.sigmoid_focal_loss(x, y, alpha=a, gamma=1.5, reduction="sum"))(alpha)
    np.testing.assert_allclose(grad, ((2 * y - 1) * unweighted).sum(0), rtol=1e-5)


def test_alpha_range_is_checked_statically_or_under_checkify():
    x, y = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="alpha must be in"):
        jaxbce.sigmoid_focal_loss(x, y, alpha=1.5)
    with pytest.raises(checkify.JaxRuntimeError, match=r"alpha must be in \[0, 1\]; got 1.5 at index \[2\]"):
        jaxbce.checked(jaxbce.sigmoid_focal_loss)(x, y, alpha=np.array([0.2, 0.3, 1.5], np.float32))


# Asymmetric loss


def _near_clip(clip, dtype):
    """Logits just above logit(clip), where p - clip cancels: the nearest floats, then offsets up to 1."""
    x0 = np.asarray(np.log(clip / (1 - clip)), dtype)
    steps = x0 + np.arange(1, 40, dtype=dtype) * np.spacing(x0)
    return np.concatenate([steps, x0 + np.geomspace(1e-6, 1, 60).astype(dtype)]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip", [0.0, 0.05])
@pytest.mark.parametrize(("gamma_pos", "gamma_neg"), [(0.0, 0.0), (1.0, 2.0), (0.0, 4.0), (0.5, 2.5)])
def test_asymmetric_value_and_gradient_against_mpmath(dtype, clip, gamma_pos, gamma_neg):
    """ASL in logit space: loss and logits gradient within 2 eps (relative) of 50 digits for every logit in
    [-1e4, 1e4] and just above logit(clip), hard labels; soft labels within 2 eps of the terms' size."""
    x = reference.logit_grid(dtype, dense=101, log_points=80, tail=81)
    if clip:
        x = np.concatenate([x, _near_clip(clip, dtype)])
    options = {"gamma_pos": gamma_pos, "gamma_neg": gamma_neg, "clip": clip}
    loss = functools.partial(jaxbce.asymmetric_loss, **options, reduction="none")
    for label in (0.0, 1.0, 0.3):
        y = np.full_like(x, label)
        exact, exact_grad, scale = reference.asymmetric(x, y, **options)
        with enable_x64(dtype == np.float64):
            value = loss(x, y)
            grad = jax.grad(lambda v, y=y: jnp.sum(loss(v, y)))(x)
        hard = label in (0.0, 1.0)
        assert reference.eps_error(value, exact, dtype=dtype).max() <= 2.0
        assert reference.eps_error(grad, exact_grad, None if hard else scale, dtype=dtype).max() <= 2.0


def test_asymmetric_reduces_to_bce_and_focal():
    """clip = 0: both gammas 0 is the logits BCE, and gamma_pos = gamma_neg = gamma is the focal loss with
    alpha None at hard labels (the same cores)."""
    rng = np.random.default_rng(5)
    x = rng.normal(scale=6, size=(5, 7)).astype(np.float32)
    y = (rng.uniform(size=(5, 7)) > 0.5).astype(np.float32)
    bce = jaxbce.binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_array_equal(jaxbce.asymmetric_loss(x, y, gamma_neg=0.0, clip=0.0, reduction="none"), bce)
    focal = jaxbce.sigmoid_focal_loss(x, y, alpha=None, gamma=2.0, reduction="none")
    asl = jaxbce.asymmetric_loss(x, y, gamma_pos=2.0, gamma_neg=2.0, clip=0.0, reduction="none")
    np.testing.assert_array_equal(asl, focal)


def test_asymmetric_soft_labels_are_linear_and_pos_weight_scales_positives():
    rng = np.random.default_rng(6)
    x = rng.normal(scale=4, size=(3, 5)).astype(np.float32)
    y = rng.uniform(size=(3, 5)).astype(np.float32)
    pw = np.array([0.5, 1.0, 2.0, 3.0, 7.0], np.float32)
    loss = functools.partial(jaxbce.asymmetric_loss, reduction="none")
    positive, negative = (np.asarray(loss(x, np.full_like(x, v)), np.float64) for v in (1.0, 0.0))
    np.testing.assert_allclose(loss(x, y, pos_weight=pw), pw * y * positive + (1 - y) * negative, rtol=1e-6)


@pytest.mark.parametrize("stop", [False, True])
def test_asymmetric_weighted_positive_gradient_is_scaled_before_it_is_rounded(stop):
    """At x = 86..88, sigmoid(-x) is subnormal in float32 (flushed to 0 by XLA), but pos_weight * weight *
    sigmoid(-x) is a normal number: the positive term carries pos_weight inside the BCE core, which scales
    before it rounds (make test-thorough found the 0 that forming sigmoid(-x) first gave). Reference: the
    float64 formula -weight * pos_weight * sigmoid(-x)."""
    x = np.array([86.0, 87.5, 88.0], np.float32)
    four = np.full(3, 4.0, np.float32)
    loss = functools.partial(jaxbce.asymmetric_loss, reduction="sum", stop_focusing_gradient=stop)
    grad = jax.grad(lambda v: loss(v, np.ones(3, np.float32), weight=four, pos_weight=four))(x)
    expected = -16 / (1 + np.exp(x.astype(np.float64)))
    assert (-expected > np.finfo(np.float32).tiny).all()
    np.testing.assert_allclose(grad, expected, rtol=4e-7)


def test_asymmetric_stop_focusing_gradient_matches_the_weighted_bce_gradient():
    """With the focusing weights held constant, the gradient is the weights times the cross-entropy gradients
    (float64 formula: -(1 - p)**gamma_pos (1 - p) for positives, p_m**gamma_neg p (1 - p) / (1 - p_m) for
    kept negatives); the value does not change."""
    xf = np.linspace(-8, 12, 101).astype(np.float32)
    x64 = xf.astype(np.float64)
    p = 1 / (1 + np.exp(-x64))
    p_m = np.maximum(p - 0.05, 0)
    for label, expected in (
        (1.0, -((1 - p) ** 1.0) * (1 - p)),
        (0.0, p_m**4 * p * (1 - p) / (1 - p_m)),
    ):
        y = np.full(xf.shape, label, np.float32)
        loss = functools.partial(jaxbce.asymmetric_loss, gamma_pos=1.0, gamma_neg=4.0, clip=0.05, reduction="sum")
        stopped = functools.partial(loss, stop_focusing_gradient=True)
        np.testing.assert_array_equal(stopped(xf, y), loss(xf, y))
        grad = jax.grad(stopped)(xf, y)
        np.testing.assert_allclose(grad, expected, rtol=4e-7, atol=1e-30)


def test_asymmetric_option_errors():
    x, y = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="clip must be in"):
        jaxbce.asymmetric_loss(x, y, clip=1.0)
    with pytest.raises(ValueError, match="clip must be in"):
        jaxbce.asymmetric_loss(x, y, clip=-0.1)
    with pytest.raises(ValueError, match="gamma_neg must be a finite Python float >= 0"):
        jaxbce.asymmetric_loss(x, y, gamma_neg=-1.0)
    with pytest.raises(TypeError, match="stop_focusing_gradient must be a bool"):
        jaxbce.asymmetric_loss(x, y, stop_focusing_gradient=1)


_GOLDEN = np.load(pathlib.Path(__file__).parent / "data" / "golden.npz")
_ASL_CASES = [(4.0, 0.0, 0.05), (4.0, 1.0, 0.05), (2.0, 1.0, 0.0), (0.0, 0.0, 0.0)]


@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize(("gamma_neg", "gamma_pos", "clip"), _ASL_CASES)
def test_asymmetric_matches_timm(gamma_neg, gamma_pos, clip, stop):
    """Golden values of timm's AsymmetricLossMultiLabel (scripts/make_golden.py; per-class weight and
    pos_weight, reduction 'none' and 'batchmean', the gradient with and without its
    disable_torch_grad_focal_loss). timm computes in float32 with 1 - sigmoid(x) formed by subtraction, so it
    is compared at 5e-5 relative for |x| <= 6; at x = -20 (label 1) and x = 30 (label 0, no clip) its clamp of
    probabilities at 1e-8 caps the loss at -log(1e-8) = 18.4 where the exact value is 20 or 30."""
    x, y, w, pw = (_GOLDEN[f"asl_{k}"] for k in ("x", "y", "w", "pw"))
    name = f"asl_n{gamma_neg}_p{gamma_pos}_c{clip}_stop{int(stop)}"
    options = {"gamma_neg": gamma_neg, "gamma_pos": gamma_pos, "clip": clip, "stop_focusing_gradient": stop}
    loss = functools.partial(jaxbce.asymmetric_loss, weight=w, pos_weight=pw, **options)
    got, timm = np.asarray(loss(x, y, reduction="none")), _GOLDEN[f"{name}_none"]
    np.testing.assert_allclose(got[1:], timm[1:], rtol=5e-5, atol=1e-7)
    exact = reference.asymmetric(x[0, :2], y[0, :2], gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)[0]
    np.testing.assert_allclose(got[0, :2], w[:2] * np.array([pw[0], 1.0]) * exact, rtol=2e-7)
    np.testing.assert_allclose(timm[0, 0], w[0] * pw[0] * -np.log(np.float32(1e-8)), rtol=1e-6)
    # Rows 1 on: the batchmean gradient (timm's is 0 where its clamp acts, in row 0).
    grad = jax.grad(lambda v: loss(v, y, reduction="batchmean"))(x)
    np.testing.assert_allclose(grad[1:], _GOLDEN[f"{name}_grad"][1:], rtol=5e-5, atol=1e-7)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.999])
def test_weight_helpers_have_finite_derivatives(beta):
    """Finite wherever the helpers are defined, counts of 0 included; at beta = 0 the weights are constants of
    the counts (every class with an example weighs 1), so their Jacobian is 0 (it was NaN: 0 * log 0)."""
    counts = np.array([0.0, 1.0, 7.0, 300.0], np.float32)
    jacobian = jax.jacrev(lambda c: jaxbce.class_balanced_weights(c, beta=beta))(counts)
    assert np.isfinite(jacobian).all()
    if beta == 0.0:
        np.testing.assert_array_equal(jacobian, 0)
    else:  # against central differences in float64 of the same formula

        def weights64(c):
            raw = np.where(c == 0, 0, (1 - beta) / -np.expm1(np.where(c == 0, 1, c) * np.log(beta)))
            return raw * c.size / raw.sum()

        step = 1e-6
        numeric = np.stack(
            [(weights64(counts + step * e) - weights64(counts - step * e)) / (2 * step) for e in np.eye(4)], axis=1
        )
        np.testing.assert_allclose(jacobian[:, 1:], numeric[:, 1:], rtol=2e-3, atol=1e-5)
    totals = np.array([10.0, 10.0, 10.0, 10.0], np.float32)
    for argnums in (0, 1):
        derivative = jax.jacrev(jaxbce.pos_weight_from_counts, argnums=argnums)(counts[:3], totals[:3])
        assert np.isfinite(derivative).all()
