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
