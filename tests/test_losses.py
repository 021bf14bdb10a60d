"""The public losses: parity with PyTorch, torchvision and Keras (golden values written by
scripts/make_golden.py, computed by those libraries in float64), accuracy against mpmath, gradients, and the
contract rules that every function shares."""

import functools
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import jaxbce
import reference
from jax_compat import enable_x64
from loss_table import LOSSES

GOLDEN = np.load(pathlib.Path(__file__).parent / "data" / "golden.npz")
F32 = functools.partial(np.asarray, dtype=np.float32)
# jaxbce computes in float32; the golden values are float64 references.
GOLDEN_TOLERANCE = {"rtol": 3e-6, "atol": 1e-6}


class PeerParityTest(parameterized.TestCase):
    @parameterized.product(
        variant=[
            ("plain", {}),
            ("weight", {"weight": "w"}),
            ("pos_weight", {"pos_weight": "pw"}),
            ("both", {"weight": "w", "pos_weight": "pw"}),
        ],
        reduction=["none", "sum", "mean"],
    )
    def test_bce_with_logits_matches_torch(self, variant, reduction):
        name, arguments = variant
        kwargs = {key: F32(GOLDEN[f"bce_logits_{value}"]) for key, value in arguments.items()}
        got = jaxbce.binary_cross_entropy_with_logits(
            F32(GOLDEN["bce_logits_x"]), F32(GOLDEN["bce_logits_y"]), reduction=reduction, **kwargs
        )
        np.testing.assert_allclose(got, GOLDEN[f"bce_logits_{name}_{reduction}"], **GOLDEN_TOLERANCE)

    @parameterized.product(weighted=[False, True], reduction=["none", "sum", "mean"])
    def test_bce_matches_torch(self, weighted, reduction):
        kwargs = {"weight": F32(GOLDEN["bce_w"])} if weighted else {}
        got = jaxbce.binary_cross_entropy(F32(GOLDEN["bce_p"]), F32(GOLDEN["bce_y"]), reduction=reduction, **kwargs)
        expected = GOLDEN[f"bce_{'weight' if weighted else 'plain'}_{reduction}"]
        np.testing.assert_allclose(got, expected, **GOLDEN_TOLERANCE)

    def test_bce_gradient_matches_torch(self):
        grad = jax.grad(lambda p: jaxbce.binary_cross_entropy(p, F32(GOLDEN["bce_y"]), reduction="sum"))(
            F32(GOLDEN["bce_p"])
        )
        np.testing.assert_allclose(grad, GOLDEN["bce_grad_sum"], rtol=3e-6)

    @parameterized.product(alpha=[0.25, -1.0], gamma=[0.0, 0.5, 2.0], reduction=["none", "sum", "mean"])
    def test_focal_matches_torchvision(self, alpha, gamma, reduction):
        got = jaxbce.sigmoid_focal_loss(
            F32(GOLDEN["focal_x"]),
            F32(GOLDEN["focal_y"]),
            alpha=None if alpha < 0 else alpha,
            gamma=gamma,
            reduction=reduction,
        )
        np.testing.assert_allclose(got, GOLDEN[f"focal_a{alpha}_g{gamma}_{reduction}"], **GOLDEN_TOLERANCE)

    @parameterized.parameters(0.0, 0.2)
    def test_bce_label_smoothing_matches_keras(self, smoothing):
        got = jaxbce.binary_cross_entropy_with_logits(
            F32(GOLDEN["keras_x"]), F32(GOLDEN["keras_y"]), label_smoothing=smoothing, axis=-1
        )
        np.testing.assert_allclose(got, GOLDEN[f"keras_bce_ls{smoothing}"], **GOLDEN_TOLERANCE)

    @parameterized.product(alpha_gamma=[(0.25, 2.0), (0.6, 1.0)], smoothing=[0.0, 0.2])
    def test_focal_matches_keras(self, alpha_gamma, smoothing):
        alpha, gamma = alpha_gamma
        got = jaxbce.sigmoid_focal_loss(
            F32(GOLDEN["keras_x"]),
            F32(GOLDEN["keras_y"]),
            alpha=alpha,
            gamma=gamma,
            label_smoothing=smoothing,
            axis=-1,
        )
        np.testing.assert_allclose(got, GOLDEN[f"keras_focal_a{alpha}_g{gamma}_ls{smoothing}"], **GOLDEN_TOLERANCE)


LOGITS = reference.logit_grid(np.float32, dense=401, log_points=300, tail=241)
SOFT_AND_HARD = (0.0, 1.0, 1e-3, 0.3, 0.5, 0.95)


def _grad(function, *args, argnums=0):
    return jax.grad(lambda *a: function(*a, reduction="sum"), argnums=argnums)(*args)


class AccuracyTest(parameterized.TestCase):
    """float32 against 50-digit mpmath; the bounds (eps) are the measured maxima rounded up."""

    @parameterized.parameters(
        (0.25, 0.0, 0.0, np.float32),
        (0.25, 0.5, 0.0, np.float32),
        (0.25, 1.7, 0.0, np.float32),
        (0.25, 2.0, 0.0, np.float32),
        (None, 3.0, 0.0, np.float32),
        (None, 5.0, 0.0, np.float32),
        (0.3, 2.0, 0.1, np.float32),
        (0.25, 2.0, 0.0, np.float64),
        (None, 1.7, 0.1, np.float64),
    )
    def test_focal(self, alpha, gamma, label_smoothing, dtype):
        logits = LOGITS if dtype == np.float32 else reference.logit_grid(dtype, dense=401, log_points=300, tail=241)
        # Bounds (eps of the dtype) over these cases, measured maxima rounded up: float32 loss 1.40 and
        # gradient 1.25, float64 1.70 and 1.11; label smoothing adds the roundings of the smoothed labels to bce
        # (measured 1.41 / 0.93 in float32, 1.67 / 0.95 in float64; 2.05 / 1.47 in a random sweep).
        loss_bound, grad_bound = (2.0, 1.5) if label_smoothing == 0 else (2.5, 2.0)
        fn = functools.partial(jaxbce.sigmoid_focal_loss, alpha=alpha, gamma=gamma, label_smoothing=label_smoothing)
        for label in SOFT_AND_HARD:
            y = np.full_like(logits, label)
            ref_loss, ref_grad, scale = reference.sigmoid_focal(
                logits, y, alpha=alpha, gamma=gamma, label_smoothing=label_smoothing
            )
            with enable_x64(dtype == np.float64):
                loss = fn(logits, y, reduction="none")
                grad = _grad(fn, logits, y)
            hard = label in (0.0, 1.0) and label_smoothing == 0
            loss_error = reference.eps_error(loss, ref_loss, dtype=dtype)
            grad_error = reference.eps_error(grad, ref_grad, None if hard else scale, dtype=dtype)
            assert loss_error.max() <= loss_bound, (label, loss_error.max(), logits[loss_error.argmax()])
            assert grad_error.max() <= grad_bound, (label, grad_error.max(), logits[grad_error.argmax()])

    def test_binary_entropy(self):
        ref_value, ref_grad = reference.binary_entropy(LOGITS)
        value = jaxbce.binary_entropy(LOGITS, reduction="none")
        assert reference.eps_error(value, ref_value, dtype=np.float32).max() <= 1.5
        assert reference.eps_error(_grad(jaxbce.binary_entropy, LOGITS), ref_grad, dtype=np.float32).max() <= 1.5

    def test_binary_kl_divergence(self):
        targets = np.array([-30, -5, -1, -0.1, 0, 0.3, 2, 20], np.float32)
        offsets = np.concatenate([-np.geomspace(1e-6, 1e3, 150), np.geomspace(1e-6, 1e3, 150), [0]])
        x = (targets[:, None] + offsets[None, :]).astype(np.float32)
        t = np.broadcast_to(targets[:, None], x.shape).copy()
        ref_kl, ref_dx, ref_dt = reference.binary_kl_divergence(x, t)
        kl = jaxbce.binary_kl_divergence(x, t, reduction="none")
        dx, dt = _grad(jaxbce.binary_kl_divergence, x, t, argnums=(0, 1))
        assert reference.eps_error(kl, ref_kl, dtype=np.float32).max() <= 3.0
        assert reference.eps_error(dx, ref_dx, dtype=np.float32).max() <= 3.0
        assert reference.eps_error(dt, ref_dt, dtype=np.float32).max() <= 1.5

    @parameterized.parameters(0.0, 1.0, 0.3)
    def test_binary_cross_entropy(self, label):
        p = np.concatenate(
            [np.linspace(0, 1, 2001), np.geomspace(1e-30, 0.5, 300), 1 - np.geomspace(1e-7, 0.5, 300)]
        ).astype(np.float32)
        y = np.full_like(p, label)
        ref_loss, ref_grad, scale = reference.bce_with_probabilities(p, y)
        loss = jaxbce.binary_cross_entropy(p, y, reduction="none")
        assert reference.eps_error(loss, ref_loss, dtype=np.float32).max() <= 1.5
        grad = _grad(jaxbce.binary_cross_entropy, p, y)
        assert reference.eps_error(grad, ref_grad, scale, dtype=np.float32).max() <= 1.5

    def test_probability_clamp_gives_exactly_100(self):
        loss = jaxbce.binary_cross_entropy(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]), reduction="none")
        np.testing.assert_array_equal(loss, [100.0, 100.0])
        grad = _grad(jaxbce.binary_cross_entropy, jnp.array([0.0, 1.0, 0.0, 1.0]), jnp.array([1.0, 0.0, 0.0, 1.0]))
        floor = np.float32(1e-12)  # (p - y) / max(p (1 - p), 1e-12), in float32
        np.testing.assert_array_equal(grad, [-1 / floor, 1 / floor, 0.0, 0.0])


class GradientTest(parameterized.TestCase):
    """check_grads in float64, forward and reverse mode, for every differentiable argument."""

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(7)
        self.x = rng.normal(scale=3.0, size=(3, 4))
        self.t = rng.normal(scale=3.0, size=(3, 4))
        self.y = rng.uniform(0.05, 0.95, size=(3, 4))
        self.w = rng.uniform(0.5, 2.0, size=(3, 4))
        self.p = rng.uniform(0.05, 0.95, size=(3, 4))

    # A gamma below 1 and one above, each alpha and label_smoothing value once: the independent finite-difference
    # check of the rules that tests/test_derivatives.py checks against mpmath for every option row and order
    # (40 s a case here: check_grads traces second derivatives in both modes, in float64).
    @parameterized.parameters(
        (None, 0.5, 0.1),
        (0.25, 1.7, 0.0),
    )
    def test_focal(self, alpha, gamma, label_smoothing):
        def loss(x, y, w):
            return jaxbce.sigmoid_focal_loss(
                x, y, weight=w, alpha=alpha, gamma=gamma, label_smoothing=label_smoothing, reduction="sum"
            )

        with enable_x64(True):
            check_grads(loss, (self.x, self.y, self.w), order=2, modes=("fwd", "rev"), eps=1e-4)

    def test_binary_entropy(self):
        with enable_x64(True):
            check_grads(jaxbce.binary_entropy, (self.x,), order=2, modes=("fwd", "rev"), eps=1e-4)

    def test_binary_kl_divergence(self):
        def loss(x, t, w):
            return jaxbce.binary_kl_divergence(x, t, weight=w, reduction="sum")

        with enable_x64(True):
            check_grads(loss, (self.x, self.t, self.w), order=2, modes=("fwd", "rev"), eps=1e-4)
            near = self.t + 1e-3 * self.x  # x close to t, where the textbook form cancels
            check_grads(loss, (near, self.t, self.w), order=2, modes=("fwd", "rev"), eps=1e-6)

    def test_binary_cross_entropy_first_order(self):
        # Order 1 only: the gradient in probs is PyTorch's formula by design, and it is the exact derivative
        # away from the clamps, so first-order checks hold; its own derivative is not a second-order target.
        def loss(p, y, w):
            return jaxbce.binary_cross_entropy(p, y, weight=w, label_smoothing=0.1, reduction="sum")

        with enable_x64(True):
            check_grads(loss, (self.p, self.y, self.w), order=1, modes=("fwd", "rev"), eps=1e-6)


class FocalLimitsTest(parameterized.TestCase):
    @parameterized.product(gamma=[0.0, 0.5, 1.0, 2.0, 2.5], alpha=[0.25, None])
    def test_finite_values_gradients_and_hessians_at_huge_logits(self, gamma, alpha):
        """optax#1267: NaN gradients at gamma = 0, logit 1000."""
        x = jnp.array([1e3, -1e3, 1e3, -1e3, 1e4, -3e4])
        y = jnp.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.9])

        def loss(v):
            return jaxbce.sigmoid_focal_loss(v, y, alpha=alpha, gamma=gamma, reduction="sum")

        assert np.isfinite(loss(x))
        assert np.isfinite(jax.grad(loss)(x)).all()
        assert np.isfinite(jax.hessian(loss)(x)).all()
        grad = jax.grad(loss)(x)
        alpha_neg = 1.0 if alpha is None else 1 - alpha
        alpha_pos = 1.0 if alpha is None else alpha
        # Confident and right: zero gradient. Confidently wrong: the BCE gradient (modulating factor 1).
        np.testing.assert_allclose(grad[:4], [0.0, 0.0, alpha_neg, -alpha_pos], atol=1e-30)

    def test_value_at_the_largest_logits(self):
        """Confidently wrong at logits within a factor 2 of float32's maximum: alpha_t * x, as the float64 formula
        gives there (sigmoid(x) rounds to 1 and log1p(exp(-|x|)) to 0); make test-thorough found NaN here."""
        x = np.array([3.4024083e38, -3.4028235e38, 2e38, 3.4028235e38], np.float32)
        y = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
        got = jaxbce.sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0, reduction="none")
        expected = np.abs(x.astype(np.float64)) * np.where(y == 1, 0.25, 0.75) * (y != np.sign(x).clip(0))
        np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=2 * np.finfo(np.float32).eps)

    def test_gamma_zero_is_alpha_weighted_bce(self):
        x, y = np.linspace(-20, 20, 41, dtype=np.float32), np.linspace(0, 1, 41, dtype=np.float32)
        focal = jaxbce.sigmoid_focal_loss(x, y, alpha=None, gamma=0.0, reduction="none")
        np.testing.assert_array_equal(focal, jaxbce.binary_cross_entropy_with_logits(x, y, reduction="none"))

    def test_bad_focal_options(self):
        with pytest.raises(ValueError, match="alpha must be in"):
            jaxbce.sigmoid_focal_loss(jnp.zeros(2), jnp.zeros(2), alpha=1.5)
        with pytest.raises(ValueError, match="gamma must be"):
            jaxbce.sigmoid_focal_loss(jnp.zeros(2), jnp.zeros(2), gamma=-1.0)


class InformationIdentityTest(parameterized.TestCase):
    def test_kl_is_non_negative_and_zero_on_the_diagonal(self):
        rng = np.random.default_rng(3)
        x = np.concatenate([rng.normal(scale=10, size=2000), [0.0, 1e4, -1e4, np.inf, -np.inf]]).astype(np.float32)
        t = np.concatenate([x[:1000] + rng.normal(scale=1e-3, size=1000), rng.normal(size=1005)]).astype(np.float32)
        kl = jaxbce.binary_kl_divergence(x, t, reduction="none")
        assert (np.asarray(kl) >= 0).all()
        np.testing.assert_array_equal(jaxbce.binary_kl_divergence(x, x, reduction="none"), 0.0)
        grads = _grad(jaxbce.binary_kl_divergence, x, x, argnums=(0, 1))
        np.testing.assert_array_equal(grads[0], 0.0)
        np.testing.assert_array_equal(grads[1], 0.0)

    def test_cross_entropy_is_entropy_plus_kl(self):
        """CE(x, sigmoid(t)) = H(t) + KL(t || x) in float64. The label sigmoid(t) is rounded once, which moves
        CE by up to |dCE/dy| * eps = |x| * eps; the identity holds to that and a few eps of CE."""
        with enable_x64(True):
            rng = np.random.default_rng(5)
            x, t = rng.normal(scale=6, size=(2, 4000))
            q = np.asarray(jaxbce._numerics.sigmoid(jnp.asarray(t)))
            ce = jaxbce.binary_cross_entropy_with_logits(x, q, reduction="none")
            h = jaxbce.binary_entropy(t, reduction="none")
            kl = jaxbce.binary_kl_divergence(x, t, reduction="none")
            eps = np.finfo(np.float64).eps
            assert (np.abs(ce - (h + kl)) <= 4 * eps * (np.abs(ce) + np.abs(x))).all()

    def test_entropy_limits(self):
        h = jaxbce.binary_entropy(jnp.array([0.0, jnp.inf, -jnp.inf, jnp.nan]), reduction="none")
        np.testing.assert_array_equal(h[:3], [np.log(np.float32(2.0)), 0.0, 0.0])
        assert np.isnan(h[3])
        grad = _grad(jaxbce.binary_entropy, jnp.array([0.0, jnp.inf, -jnp.inf]))
        np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0])


def _call(name, first, second, **kwargs):
    function = getattr(jaxbce, name)
    if name == "binary_entropy":
        kwargs.pop("weight", None)
        return function(first, **kwargs)
    return function(first, second, **kwargs)


# The public losses: every name of the API defined in jaxbce._losses (not the value-check helpers).
FUNCTIONS = tuple(LOSSES)  # every registered elementwise loss


def _inputs(name, shape=(4, 3), seed=0):
    rng = np.random.default_rng(seed)
    first = rng.uniform(0.01, 0.99, shape) if name == "binary_cross_entropy" else rng.normal(scale=3, size=shape)
    second = rng.normal(size=shape) if name == "binary_kl_divergence" else rng.uniform(size=shape)
    return first.astype(np.float32), second.astype(np.float32)


class SharedContractTest(chex.TestCase):
    """The rules every loss shares, checked on each of them through the same pipeline."""

    @parameterized.parameters(*FUNCTIONS)
    def test_all_masked_mean_is_zero_with_zero_gradient(self, name):
        first, second = _inputs(name)
        nothing = np.zeros(first.shape, bool)
        value, grads = jax.value_and_grad(lambda a, b: _call(name, a, b, where=nothing), argnums=(0, 1))(first, second)
        self.assertEqual(value, 0.0)
        chex.assert_trees_all_equal(grads, (np.zeros_like(first), np.zeros_like(second)))

    @parameterized.product(name=FUNCTIONS, dtype=[jnp.bfloat16, jnp.float16])
    def test_half_precision_in_float32_out_in_input_dtype(self, name, dtype):
        first, second = _inputs(name)
        low = first.astype(dtype)
        second_low = second.astype(dtype) if name == "binary_kl_divergence" else second
        for reduction in ("none", "mean"):
            out = _call(name, low, second_low, reduction=reduction)
            self.assertEqual(out.dtype, dtype)
            exact = _call(name, low.astype(np.float32), np.asarray(second_low, np.float32), reduction=reduction)
            np.testing.assert_array_equal(out, exact.astype(dtype))

    @parameterized.parameters(*FUNCTIONS)
    def test_shape_mismatch_and_dtype_errors(self, name):
        first, second = _inputs(name)
        if name != "binary_entropy":
            with pytest.raises(ValueError, match=r"exactly the shape"):
                _call(name, first[:, :1], second[:, 0])
        with pytest.raises(TypeError, match="must have a real floating dtype"):
            _call(name, first.astype(np.int32), second)
        with pytest.raises(ValueError, match="reduction must be one of"):
            _call(name, first, second, reduction="avg")
        with pytest.raises(ValueError, match="where of shape"):
            _call(name, first, second, where=np.ones((2, 4, 3), bool))

    @parameterized.parameters(*FUNCTIONS)
    def test_vmap_equals_loop_and_axis(self, name):
        first, second = _inputs(name)
        per_row = jax.vmap(lambda a, b: _call(name, a, b))(first, second)
        loop = np.array([_call(name, first[i], second[i]) for i in range(len(first))])
        np.testing.assert_allclose(per_row, loop, rtol=1e-6)
        np.testing.assert_allclose(_call(name, first, second, axis=-1), loop, rtol=1e-6)

    @parameterized.parameters(*FUNCTIONS)
    def test_nan_propagates(self, name):
        first, second = _inputs(name)
        first[0, 0] = np.nan
        out = _call(name, first, second, reduction="none")
        assert np.isnan(out[0, 0])
        assert np.isfinite(np.asarray(out)[1:]).all()
