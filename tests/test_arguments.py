"""Arguments mean one thing everywhere, and a mistake is an error that names the argument and the fix.

One test per rule, driven by the loss table (``tests/loss_table.py``) where the rule is shared, so that a new
loss gets it for free; then a sweep of every public function and every array argument with the values a tired
user passes (None, a string, a list, a wrong dtype, a wrong rank, a NumPy scalar, a traced value).
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbce
from jaxbce._arguments import Role
from loss_table import LOSSES

HUGE = 3.4e38  # near the largest float32: softplus and its derivatives overflow to inf


def _elementwise_arguments(loss, extreme=False):
    """Arrays for a registered loss: (4,) each; with ``extreme``, the first three elements at the float32
    limits, where the loss or a derivative is infinite."""
    values = {
        Role.LOGITS: [-HUGE, HUGE, -HUGE, 1.0] if extreme else [-2.0, 0.5, 3.0, 1.0],
        Role.PROBABILITIES: [0.0, 1.0, 1e-45, 0.3] if extreme else [0.1, 0.5, 0.9, 0.3],
        Role.LABELS: [0.0, 1.0, 0.5, 0.3],
        Role.NON_NEGATIVE: [2.0, 2.0, 2.0, 1.5],
        Role.FRACTION: [0.25, 0.25, 0.25, 0.5],
    }
    arguments = {}
    for index, (name, role) in enumerate(loss.arrays):
        column = values[role]
        if role is Role.LOGITS and index > 0:  # KL's target logits: the other extreme
            column = [HUGE, -HUGE, HUGE, -0.5] if extreme else [1.0, -1.0, 0.0, -0.5]
        arguments[name] = jnp.asarray(column, jnp.float32)
    return arguments


def _call(loss, arguments, **options):
    given = dict(arguments)
    positional = [given.pop(name) for name in loss.positional]
    return loss.function(*positional, **given, **options)


WEIGHTED = [name for name, loss in LOSSES.items() if loss.takes_weight]
WITH_LABELS = [name for name, loss in LOSSES.items() if any(role is Role.LABELS for _, role in loss.arrays)]


@pytest.mark.parametrize("name", WEIGHTED)
def test_zero_weight_removes_its_element_from_every_derivative(name):
    """A zero weight contributes 0 to the value and to the derivatives of every other argument, in reverse and
    forward mode, even where the loss or its derivative is infinite; the weight's own derivative is the loss
    where that is finite (d(w L)/dw), and 0 where it is infinite, as 0 * inf is taken to be 0."""
    loss = LOSSES[name]
    arguments = _elementwise_arguments(loss, extreme=True)
    weight = jnp.asarray([0.0, 0.0, 0.0, 1.0], jnp.float32)
    names = list(arguments)

    def total(weight, *values):
        return _call(loss, dict(zip(names, values, strict=True)), weight=weight, reduction="sum")

    argnums = tuple(range(len(names) + 1))
    value, grads = jax.value_and_grad(total, argnums=argnums)(weight, *arguments.values())
    kept = _call(loss, {n: a[3:] for n, a in arguments.items()}, reduction="sum")
    np.testing.assert_allclose(value, kept, rtol=1e-6)
    for argument, grad in zip(["weight", *names], grads, strict=True):
        assert np.isfinite(grad).all(), (argument, grad)
        if argument != "weight":
            np.testing.assert_array_equal(grad[:3], 0, err_msg=argument)
    for position in range(1, len(names) + 1):  # forward mode, one argument at a time
        tangents = [jnp.zeros_like(weight), *(jnp.zeros_like(a) for a in arguments.values())]
        tangents[position] = jnp.ones_like(tangents[position])
        _, tangent = jax.jvp(total, (weight, *arguments.values()), tuple(tangents))
        expected = grads[position][3]  # only the kept element moves the sum
        np.testing.assert_allclose(tangent, expected, rtol=1e-5, err_msg=names[position - 1])


@pytest.mark.parametrize("name", list(LOSSES))
def test_static_options_take_python_and_numpy_numbers_and_refuse_arrays(name):
    loss = LOSSES[name]
    arguments = _elementwise_arguments(loss)
    for option, samples in loss.options.items():
        value = samples[-1]
        expected = _call(loss, arguments, **{option: value})
        np.testing.assert_array_equal(_call(loss, arguments, **{option: np.float64(value)}), expected)
        with pytest.raises(TypeError, match=f"{name}\\(\\): {option} is a static option and must be a Python number"):
            _call(loss, arguments, **{option: jnp.asarray(value)})
        with pytest.raises(TypeError, match=f"{option} is a static option .* got a traced value"):
            jax.jit(lambda v, option=option: _call(loss, arguments, **{option: v}))(value)


@pytest.mark.parametrize("name", WITH_LABELS)
def test_ignore_label_inside_the_label_range_is_refused(name):
    loss = LOSSES[name]
    for ignore_label in (0, 1, 0.5, np.int64(1)):
        with pytest.raises(ValueError, match="is a valid label value, so it would mask real labels"):
            _call(loss, _elementwise_arguments(loss), ignore_label=ignore_label)
    _call(loss, _elementwise_arguments(loss), ignore_label=-1)


def _loss_and_features_grad(update):
    """The update's loss and features gradient as one array (its parameters and state are trees, not swept)."""

    @functools.wraps(update)
    def call(*args, **kwargs):
        loss, features_grad, _, _ = update(*args, **kwargs)
        return jnp.concatenate([loss[None], features_grad.ravel()])

    return call


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray | np.generic | jax.Array)


# Every public function with a valid call: (function, positional, keyword) arrays and options.
def _public_calls():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    y = (rng.uniform(size=(4, 3)) < 0.5).astype(np.float32)
    calls = {}
    for name, loss in LOSSES.items():
        arguments = {n: np.asarray(a) for n, a in _elementwise_arguments(loss).items()}
        positional = [arguments.pop(n) for n in loss.positional]
        calls[name] = (loss.function, loss.positional, positional, arguments)
    features, kernel = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
    calls["linear_binary_cross_entropy"] = (
        jaxbce.linear_binary_cross_entropy, ("features", "kernel", "labels"), [features, kernel, y],
        {"bias": np.zeros(3, np.float32), "weight": np.ones((4, 1), np.float32)},
    )  # fmt: skip
    calls["linear_sigmoid_focal_loss"] = (
        jaxbce.linear_sigmoid_focal_loss, ("features", "kernel", "labels"), [features, kernel, y],
        {"alpha": np.array([0.2, 0.5, 0.7], np.float32), "weight": np.ones((4, 1), np.float32)},
    )  # fmt: skip
    calls["linear_asymmetric_loss"] = (
        jaxbce.linear_asymmetric_loss, ("features", "kernel", "labels"), [features, kernel, y],
        {"pos_weight": np.full(3, 2.0, np.float32), "bias": np.zeros(3, np.float32)},
    )  # fmt: skip
    head = {"kernel": kernel, "bias": np.zeros(3, np.float32)}
    calls["linear_binary_cross_entropy_update"] = (
        _loss_and_features_grad(jaxbce.linear_binary_cross_entropy_update),
        ("features", "params", "opt_state", "labels"), [features, head, optax.sgd(0.1).init(head), y],
        {"weight": np.ones((4, 1), np.float32), "optimizer": optax.sgd(0.1)},
    )  # fmt: skip
    calls["linear_update"] = (
        _loss_and_features_grad(jaxbce.linear_update),
        ("loss", "features", "params", "opt_state", "labels"),
        [jaxbce.linear_sigmoid_focal_loss, features, head, optax.sgd(0.1).init(head), y],
        {"optimizer": optax.sgd(0.1)},  # its options pass through **options: the update's sweep covers them
    )  # fmt: skip
    calls["sigmoid_contrastive_loss"] = (
        jaxbce.sigmoid_contrastive_loss, ("image_embeddings", "text_embeddings", "logit_scale", "logit_bias"),
        [x, x, np.float32(2.0), np.float32(-1.0)], {},
    )  # fmt: skip
    calls["linear_top_k"] = (
        jaxbce.linear_top_k, ("features", "kernel", "k"), [features, kernel, 2], {"bias": np.zeros(3, np.float32)},
    )  # fmt: skip
    ranking = np.argsort(-x, axis=1).astype(np.int32)
    calls["precision_at_k"] = (jaxbce.precision_at_k, ("indices", "labels"), [ranking, y], {"k": 2})
    calls["ndcg_at_k"] = (
        jaxbce.ndcg_at_k, ("indices", "labels"), [ranking, y], {"k": 2, "propensities": np.full(3, 0.5, np.float32)},
    )  # fmt: skip
    calls["propensity_scores"] = (jaxbce.propensity_scores, ("label_counts", "num_examples"),
                                  [np.array([3.0, 0.0, 7.0], np.float32), 100], {})  # fmt: skip
    counts = np.array([3.0, 0.0, 7.0], np.float32)
    calls["pos_weight_from_counts"] = (jaxbce.pos_weight_from_counts, ("positive_counts", "total_counts"),
                                       [counts, np.float32(10.0)], {})  # fmt: skip
    calls["class_balanced_weights"] = (jaxbce.class_balanced_weights, ("counts",), [counts], {})
    return calls


PUBLIC = _public_calls()


def _with(positional_names, positional, keywords, argument, value):
    positional, keywords = list(positional), dict(keywords)
    if argument in positional_names:
        positional[positional_names.index(argument)] = value
    else:
        keywords[argument] = value
    return positional, keywords


def test_every_public_function_is_in_the_sweep():
    functions = {name for name in jaxbce.__all__ if name not in ("checked", "value_checks")}
    assert set(PUBLIC) == functions


@pytest.mark.parametrize("name", list(PUBLIC))
def test_a_tired_user_sweep(name):
    """Each array argument given a string, None, a nested list, a NumPy scalar, a complex dtype, an extra
    dimension and a traced value: the same number where the value is a fine array, else a TypeError or
    ValueError that names the argument (and, for a non-array or a missing one, the function)."""
    function, positional_names, positional, keywords = PUBLIC[name]
    expected = function(*positional, **keywords)
    parameters = inspect.signature(function).parameters
    optional = {n for n, p in parameters.items() if p.default is None or "None" in str(p.annotation)}
    for argument, array in [*zip(positional_names, positional, strict=False), *keywords.items()]:
        if not _is_array(array):
            continue  # the update's parameters, optimizer state and optimizer

        def call(value, argument=argument):
            args, kwargs = _with(positional_names, positional, keywords, argument, value)
            return function(*args, **kwargs)

        with pytest.raises(TypeError, match=f"{name}\\(\\): {argument} must be an array, got str"):
            call("0.5")
        if argument not in optional:
            with pytest.raises(TypeError, match=f"{name}\\(\\): {argument} is required: an array, got None"):
                call(None)
        np.testing.assert_allclose(call(np.asarray(array).tolist()), expected, rtol=1e-6)  # a nested list
        np.testing.assert_allclose(jax.jit(call)(array), expected, rtol=1e-6)  # traced
        if np.ndim(array) == 0:
            np.testing.assert_allclose(call(np.float32(array)), expected, rtol=1e-6)  # a NumPy scalar
        with pytest.raises(TypeError, match=argument):
            call(np.asarray(array).astype(np.complex64))
        out, error = None, None
        try:  # two more leading dimensions: an error naming the argument where another one pins the shape
            out = call(np.asarray(array)[None, None])
        except ValueError as raised:
            error = raised
        if error is not None:
            assert argument in str(error), (argument, error)
        else:
            np.testing.assert_allclose(np.sum(out), np.sum(expected), rtol=1e-6)


# linear_update is a Python dispatcher over its jitted body: too many positional arguments are Python's own
# TypeError, which names it.
@pytest.mark.parametrize("name", [name for name in PUBLIC if name != "linear_update"])
def test_too_many_positional_arguments_name_the_function_and_the_keyword(name):
    function, _, positional, _ = PUBLIC[name]
    parameters = inspect.signature(function).parameters.values()
    count = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)
    keyword_only = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    message = f"{name}\\(\\) takes {count} positional arguments"
    if keyword_only:
        message += f".*pass them by name, e.g. {keyword_only[0]}="
    with pytest.raises(TypeError, match=message):
        function(*positional, *([np.float32(1.0)] * (count + 1 - len(positional))))
