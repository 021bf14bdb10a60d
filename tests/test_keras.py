"""jaxbce.keras: Keras 3 loss classes (JAX backend) with Keras's conventions, equal to keras.losses on moderate
inputs for every option they share, exact where Keras clips, trainable with fit, and saved and reloaded with a
model. The Keras references are Keras itself (keras.losses, the installed version)."""

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")

import jaxbce  # noqa: E402
import jaxbce.keras  # noqa: E402

RNG = np.random.default_rng(11)
LOGITS = RNG.normal(scale=3.0, size=(6, 5)).astype(np.float32)  # moderate: Keras's clip at 1e-7 does not act
LABELS = (RNG.uniform(size=(6, 5)) < 0.4).astype(np.float32)
SOFT = RNG.uniform(size=(6, 5)).astype(np.float32)
SAMPLE_WEIGHT = RNG.uniform(0.5, 2.0, size=(6,)).astype(np.float32)
REDUCTIONS = ("sum_over_batch_size", "sum", "none", "mean", "mean_with_sample_weight")


def _sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def test_import_jaxbce_does_not_import_keras():
    code = "import sys, jaxbce; jaxbce.binary_entropy(0.0); assert 'keras' not in sys.modules, 'keras imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("labels", [LABELS, SOFT], ids=["hard", "soft"])
def test_binary_crossentropy_equals_keras(reduction, from_logits, label_smoothing, labels):
    y_pred = LOGITS if from_logits else _sigmoid(LOGITS).astype(np.float32)
    options = {"from_logits": from_logits, "label_smoothing": label_smoothing, "reduction": reduction}
    ours = jaxbce.keras.BinaryCrossentropy(**options)(labels, y_pred, sample_weight=SAMPLE_WEIGHT)
    theirs = keras.losses.BinaryCrossentropy(**options)(labels, y_pred, sample_weight=SAMPLE_WEIGHT)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "none"])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (None, 2.0), (0.6, 0.5), (None, 0.0)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_binary_focal_crossentropy_equals_keras(reduction, from_logits, alpha, gamma, label_smoothing):
    y_pred = LOGITS if from_logits else _sigmoid(LOGITS).astype(np.float32)
    options = {"gamma": gamma, "from_logits": from_logits, "label_smoothing": label_smoothing, "reduction": reduction}
    ours = jaxbce.keras.BinaryFocalCrossentropy(alpha=alpha, **options)(LABELS, y_pred, sample_weight=SAMPLE_WEIGHT)
    keras_alpha = {"apply_class_balancing": alpha is not None, "alpha": 0.25 if alpha is None else alpha}
    theirs = keras.losses.BinaryFocalCrossentropy(**keras_alpha, **options)(LABELS, y_pred, sample_weight=SAMPLE_WEIGHT)
    np.testing.assert_allclose(ours, theirs, rtol=5e-6)


def test_exact_where_keras_clips():
    """A confidently wrong prediction: the loss is |x| + log1p(exp(-|x|)) (float64 formula); Keras clips the
    probability to 1e-7 and reads -log(1e-7) = 16.1, the same for every logit beyond 16."""
    logits = np.array([[-40.0, 60.0]], np.float32)
    labels = np.array([[1.0, 0.0]], np.float32)
    exact = np.mean(np.abs(logits.astype(np.float64)) + np.log1p(np.exp(-np.abs(logits.astype(np.float64)))))
    ours = jaxbce.keras.BinaryFocalCrossentropy(alpha=None, gamma=0.0)(labels, logits)
    theirs = keras.losses.BinaryFocalCrossentropy(gamma=0.0, from_logits=True)(labels, logits)
    np.testing.assert_allclose(ours, exact, rtol=1e-6)
    assert float(theirs) < 17  # clipped: not the loss
    # Probabilities: 0 and 1 are exact logits (-inf, +inf), tiny ones exact too (Keras clips below 1e-7).
    probs = np.array([[1e-30, 1.0]], np.float32)
    got = jaxbce.keras.BinaryCrossentropy(from_logits=False, reduction="none")(np.array([[1.0, 1.0]]), probs)
    np.testing.assert_allclose(got, [-np.log(1e-30) / 2], rtol=1e-6)
    assert np.isinf(jaxbce.keras.BinaryCrossentropy(from_logits=False)(np.array([[0.0]]), np.array([[1.0]])))


def test_pos_weight_axis_and_rank_one_labels():
    pos_weight = [1.0, 2.0, 3.0, 0.5, 1.0]
    loss = jaxbce.keras.BinaryCrossentropy(pos_weight=pos_weight, reduction="none")
    expected = jaxbce.binary_cross_entropy_with_logits(
        LOGITS, LABELS, pos_weight=np.asarray(pos_weight, np.float32), axis=-1
    )
    np.testing.assert_allclose(loss(LABELS, LOGITS), expected, rtol=1e-6)
    per_column = jaxbce.keras.BinaryCrossentropy(axis=0, reduction="none")(LABELS, LOGITS)
    np.testing.assert_allclose(per_column, jaxbce.binary_cross_entropy_with_logits(LOGITS, LABELS, axis=0), rtol=1e-6)
    # (N,) labels for (N, 1) predictions, as Keras's own losses take them.
    column = LOGITS[:, :1]
    np.testing.assert_allclose(
        jaxbce.keras.BinaryCrossentropy()(LABELS[:, 0], column),
        jaxbce.keras.BinaryCrossentropy()(LABELS[:, :1], column),
    )


@pytest.mark.parametrize(
    "loss",
    [
        jaxbce.keras.BinaryCrossentropy(label_smoothing=0.1, pos_weight=[2.0, 1.0], reduction="sum", name="bce"),
        jaxbce.keras.BinaryFocalCrossentropy(alpha=None, gamma=1.5, from_logits=False, axis=0),
        jaxbce.keras.AsymmetricLoss(gamma_pos=1.0, gamma_neg=3.0, clip=0.1),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_config_round_trip(loss):
    config = loss.get_config()
    again = type(loss).from_config(config)
    assert again.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == config


def test_fit_learns_and_the_model_saves_and_reloads(tmp_path):
    """A logistic regression trained with model.fit on a separable problem; saved and reloaded, the model
    evaluates to the same loss with the same (deserialised) jaxbce loss."""
    keras.utils.set_random_seed(0)
    x = RNG.normal(size=(256, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], np.float32) > 0).astype(np.float32)[:, None]
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss=jaxbce.keras.BinaryFocalCrossentropy(gamma=1.0))
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < before / 5, (before, after)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded.loss, jaxbce.keras.BinaryFocalCrossentropy)
    assert reloaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(reloaded.evaluate(x, y, verbose=0), after, rtol=1e-6)


def test_asymmetric_loss_is_jaxbce_s_per_example_mean():
    loss = jaxbce.keras.AsymmetricLoss(reduction="none")
    np.testing.assert_allclose(loss(LABELS, LOGITS), jaxbce.asymmetric_loss(LOGITS, LABELS, axis=-1), rtol=1e-6)
