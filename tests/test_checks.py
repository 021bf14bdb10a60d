"""Value checks through jax.experimental.checkify: messages, masks, jit, and zero cost when off."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.experimental import checkify

import jaxbce

NAN = float("nan")


class CheckedTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("labels_range", "binary_cross_entropy_with_logits", {"labels": [0.0, 1.5, 0.2]},
         "labels must be in [0, 1]; got 1.5 at index [1]"),
        ("labels_negative", "sigmoid_focal_loss", {"labels": [0.0, 1.0, -0.5]},
         "labels must be in [0, 1]; got -0.5 at index [2]"),
        ("labels_nan", "binary_cross_entropy", {"labels": [NAN, 1.0, 0.0]},
         "labels must not be NaN; got nan at index [0]"),
        ("probs_range", "binary_cross_entropy", {"first": [0.5, 1.25, 0.1]},
         "probs must be in [0, 1]; got 1.25 at index [1]"),
        ("logits_nan", "binary_kl_divergence", {"first": [0.0, 0.0, NAN]},
         "logits must not be NaN; got nan at index [2]"),
        ("target_nan", "binary_kl_divergence", {"labels": [NAN, 0.0, 0.0]},
         "target_logits must not be NaN; got nan at index [0]"),
        ("weight", "binary_cross_entropy_with_logits", {"weight": [1.0, -2.0, 1.0]},
         "weight must be non-negative; got -2.0 at index [1]"),
        ("pos_weight", "binary_cross_entropy_with_logits", {"pos_weight": [1.0, 1.0, -3.0]},
         "pos_weight must be non-negative; got -3.0 at index [2]"),
        ("entropy_nan", "binary_entropy", {"first": [NAN, 0.0, 0.0]}, "logits must not be NaN; got nan at index [0]"),
    )  # fmt: skip
    def test_message_names_argument_value_and_index(self, name, overrides, message):
        function = getattr(jaxbce, name)
        first = jnp.asarray(overrides.get("first", [0.3, 0.4, 0.5]))
        second = jnp.asarray(overrides.get("labels", [0.0, 1.0, 0.5]))
        kwargs = {k: jnp.asarray(v) for k, v in overrides.items() if k in ("weight", "pos_weight")}
        args = (first,) if name == "binary_entropy" else (first, second)
        with pytest.raises(checkify.JaxRuntimeError, match=re.escape(message)):
            jaxbce.checked(function)(*args, **kwargs)

    def test_index_is_multidimensional_and_first_in_row_major_order(self):
        labels = jnp.array([[0.0, 1.0, 0.5], [0.5, 7.0, -1.0]])
        with pytest.raises(checkify.JaxRuntimeError, match=re.escape("got 7.0 at index [1 1]")):
            jaxbce.checked(jaxbce.binary_cross_entropy_with_logits)(jnp.zeros((2, 3)), labels)

    def test_masked_out_values_are_excused(self):
        labels = jnp.array([0.0, 5.0, NAN])
        logits = jnp.array([0.0, NAN, 1.0])
        keep = jnp.array([True, False, False])
        loss = jaxbce.checked(jaxbce.binary_cross_entropy_with_logits)(logits, labels, where=keep)
        np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)

    def test_valid_input_passes_and_matches_unchecked(self):
        x, y = jnp.linspace(-5, 5, 11), jnp.linspace(0, 1, 11)
        checked = jaxbce.checked(jaxbce.sigmoid_focal_loss)(x, y, gamma=2.0, reduction="sum")
        self.assertEqual(checked, jaxbce.sigmoid_focal_loss(x, y, gamma=2.0, reduction="sum"))

    def test_checkify_recipe_under_jit_around_a_train_step(self):
        def train_step(w, x, y):
            return jax.value_and_grad(lambda w: jaxbce.binary_cross_entropy_with_logits(x @ w, y))(w)

        step = jax.jit(checkify.checkify(train_step))
        x = jnp.ones((4, 2))
        with jaxbce.value_checks():  # the step is traced by its first call: here, with the checks
            error, _ = step(jnp.ones(2), x, jnp.array([0.0, 1.0, 1.0, 0.0]))
        error.throw()  # nothing to report
        error, _ = step(jnp.ones(2), x, jnp.array([0.0, 1.0, 3.0, 0.0]))
        with pytest.raises(checkify.JaxRuntimeError, match=re.escape("labels must be in [0, 1]; got 3.0 at index [2]")):
            error.throw()

    def test_unchecked_values_give_nan_not_silence(self):
        # Without checkify nothing is clamped: probabilities outside [0, 1] give NaN.
        out = jaxbce.binary_cross_entropy(jnp.array([1.5]), jnp.array([1.0]), reduction="none")
        assert np.isnan(out).all()


def _effects(function) -> set:
    x, y = jnp.ones((64, 8)), jnp.ones((64, 8))
    w, keep = jnp.ones(8), jnp.ones((64, 8), bool)
    step = jax.value_and_grad(lambda x, y, w, m: function(x, y, weight=w, where=m, pos_weight=w))
    return set(jax.make_jaxpr(step)(x, y, w, keep).effects)


def test_checks_cost_nothing_when_off():
    """Outside value_checks no check is registered: the traced step has no effects (a checkify effect would
    put every call on JAX's slow dispatch path, ~80 us); inside, the checks are there."""
    assert _effects(jaxbce.binary_cross_entropy_with_logits) == set()
    with jaxbce.value_checks():
        assert _effects(jaxbce.binary_cross_entropy_with_logits) != set()
    assert _effects(jaxbce.binary_cross_entropy_with_logits) == set()  # a new trace, not the cached one


def _function_calls():
    """Every public function with a bad value, and the message its check gives."""
    x = jnp.ones((4, 3))
    return [
        ("binary_cross_entropy_with_logits", lambda: (jnp.zeros(3), jnp.array([0.0, 2.0, 1.0])), "labels must be"),
        ("pos_weight_from_counts", lambda: (jnp.array([-1.0, 2.0]), 10.0), "positive_counts must be non-negative"),
        ("class_balanced_weights", lambda: (jnp.array([3.0, -2.0]), 0.5), "counts must be non-negative"),
        ("sigmoid_contrastive_loss", lambda: (x.at[2, 1].set(NAN), x, 1.0, 0.0),
         "image_embeddings must not be NaN; got nan at index [2 1]"),
        ("sigmoid_contrastive_loss", lambda: (x, x.at[0, 0].set(NAN), 1.0, 0.0), "text_embeddings must not be NaN"),
        ("sigmoid_contrastive_loss", lambda: (x, x, NAN, 0.0), "logit_scale must not be NaN"),
        ("sigmoid_contrastive_loss", lambda: (x, x, 1.0, NAN), "logit_bias must not be NaN"),
        ("linear_binary_cross_entropy", lambda: (x, jnp.ones((3, 2)), jnp.array([[0, 1]] * 3 + [[0, 3]])),
         "labels must be in [0, 1]"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "arguments", "message"), _function_calls(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_checked_checks_whatever_was_traced_before(name, arguments, message):
    """One rule for every public function (jit_loss): the checks flag is part of the jit cache key, so a call
    traced without checks does not hide them from checked, and the reverse."""
    function = getattr(jaxbce, name)
    function(*arguments())  # traced and cached without checks
    with pytest.raises(checkify.JaxRuntimeError, match=re.escape(message)):
        jaxbce.checked(function)(*arguments())
    function(*arguments())  # and without checks again: no error, no effect


def test_nan_embeddings_are_excused_where_masked():
    x = jnp.ones((4, 3)).at[1].set(NAN)
    keep = jnp.array([True, False, True, True])
    loss = jaxbce.checked(jaxbce.sigmoid_contrastive_loss)(x, x, 1.0, 0.0, where=keep)
    np.testing.assert_allclose(loss, jaxbce.sigmoid_contrastive_loss(x, x, 1.0, 0.0, where=keep))


@pytest.mark.parametrize("transform", [jax.jit, jax.vmap])
def test_checked_inside_a_transformation_says_what_to_do(transform):
    loss = jaxbce.checked(jaxbce.binary_cross_entropy_with_logits)
    with pytest.raises(TypeError, match=r"inside a JAX transformation.*jaxbce\.value_checks\(\)"):
        transform(loss)(jnp.zeros((2, 3)), jnp.ones((2, 3)))
