"""The custom_vjp losses under every derivative pattern research code composes, against the materialised loss.

``linear_binary_cross_entropy`` and ``sigmoid_contrastive_loss`` are ``jax.custom_vjp`` functions whose forward
pass forms only the gradients of the perturbed inputs. JAX traces that forward pass once per pattern of
perturbed inputs, while a jitted loss's traced call is shared by every use of it, so a pattern must never see
another's residuals: every case runs in one process, in a shuffled (seeded) order, and each gradient must be
the materialised loss's (``tests/reference.py``: the elementwise loss of the whole logits, and
big_vision's dense SigLIP form). A registry declares each loss once (its arguments, which of them are
differentiable, its materialised counterpart); the patterns are built on top of it.

Before the residual fix in ``_linear.py`` (a residual tree that depended on the perturbed inputs) this test,
then with every subset under six patterns, failed in 72 of its 331 cases, all of the linear loss: 58 ``foreach()
argument 2 is shorter than argument 1``, 8 ``StopIteration``, 2 bare ``AssertionError`` and 4 wrong gradients;
and ``jax.jvp`` raised the first of those instead of JAX's ``TypeError``.
"""

import functools
import itertools
import random
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbce
from reference import dense_siglip, linear_bce


class FusedLoss(NamedTuple):
    name: str
    arguments: dict[str, np.ndarray]  # every array argument, differentiable or not
    differentiable: tuple[str, ...]
    fused: Callable[..., jax.Array]  # (reduction, **arguments) -> scalar
    materialised: Callable[..., jax.Array]
    every_subset: bool = True  # every subset under EVERY_SUBSET's patterns, or each argument alone and all


def _linear(fused_loss=jaxbce.linear_binary_cross_entropy, elementwise=None, per_class_name="pos_weight", **options):
    """A fused loss of the sigmoid family against its elementwise loss of the materialised logits; ``per_class_name``
    is the name of its per-class array (``pos_weight``, or the focal loss's ``alpha``)."""
    rng = np.random.default_rng(0)
    batch, dim, classes = 6, 4, 9
    positives = np.array([[0, 3, -1], [8, 8, 1], [-1, -1, -1], [2, 5, 7], [4, -1, 6], [1, 0, 8]], np.int32)
    labels = np.zeros((batch, classes), np.float32)
    for row, indices in enumerate(positives):
        labels[row, indices[indices >= 0]] = 1
    arguments = {
        "features": rng.normal(size=(batch, dim)).astype(np.float32),
        "kernel": (rng.normal(size=(dim, classes)) / 2).astype(np.float32),
        "bias": rng.normal(size=(classes,)).astype(np.float32),
        "per_class": rng.uniform(0.1, 0.9, size=(classes,)).astype(np.float32),
        "weight": rng.uniform(0.2, 2.0, size=(batch, classes)).astype(np.float32),  # per element
        "labels": labels,
        "positives": positives,
    }
    coefficients = rng.uniform(0.5, 1.5, size=(batch,)).astype(np.float32)

    def scalar(out):  # "none": a weighted sum of the per-example losses, so that each row's cotangent differs
        return jnp.sum(coefficients * out) if out.ndim else out

    def fused(reduction, *, features, kernel, bias, per_class, weight, labels, positives):
        # Sparse positives for the sum and batchmean, dense labels for the others: the same targets.
        target = {"positives": positives} if reduction in ("sum", "batchmean") else {"labels": labels}
        return scalar(
            fused_loss(
                features, kernel, **target, bias=bias, weight=weight, reduction=reduction, chunk_size=4,
                **{per_class_name: per_class}, **options,
            )
        )  # fmt: skip

    def materialised(reduction, *, features, kernel, bias, per_class, weight, labels, positives):
        del positives
        if elementwise is None:
            return scalar(linear_bce(features, kernel, bias, per_class, weight, labels=labels, reduction=reduction))
        logits = features @ kernel + bias
        per_example = {"reduction": "sum", "axis": -1} if reduction == "none" else {"reduction": reduction}
        arrays = {"weight": weight, per_class_name: per_class}
        return scalar(elementwise(logits, labels, **arrays, **per_example, **options))

    differentiable = ("features", "kernel", "bias", "per_class", "weight")
    every_subset = elementwise is None
    return FusedLoss(fused_loss.__name__, arguments, differentiable, fused, materialised, every_subset)


def _contrastive() -> FusedLoss:
    rng = np.random.default_rng(1)
    images, texts = rng.normal(size=(2, 6, 4)).astype(np.float32) / 2
    arguments = {
        "images": images,
        "texts": texts,
        "scale": np.float32(3.0),
        "bias": np.float32(-1.5),
        "where": np.array([True, True, False, True, True, True]),
    }

    def fused(reduction, *, images, texts, scale, bias, where):
        keep = where if reduction == "masked" else None
        return jaxbce.sigmoid_contrastive_loss(images, texts, scale, bias, where=keep, chunk_size=4)

    def materialised(reduction, *, images, texts, scale, bias, where):
        return dense_siglip(images, texts, scale, bias, where if reduction == "masked" else None)

    return FusedLoss("sigmoid_contrastive_loss", arguments, ("images", "texts", "scale", "bias"), fused, materialised)


LOSSES = (
    _linear(),
    _linear(jaxbce.linear_sigmoid_focal_loss, jaxbce.sigmoid_focal_loss, "alpha", gamma=1.5, poly_epsilon=0.5),
    _linear(jaxbce.linear_asymmetric_loss, jaxbce.asymmetric_loss, "pos_weight", gamma_pos=1.0),
    _contrastive(),
)
# Cycled over the cases, so that every reduction meets many patterns without multiplying the cases.
FUSED_REDUCTIONS = ("mean", "sum", "batchmean", "none")
REDUCTIONS = {
    "linear_binary_cross_entropy": FUSED_REDUCTIONS,
    "linear_sigmoid_focal_loss": FUSED_REDUCTIONS,
    "linear_asymmetric_loss": FUSED_REDUCTIONS,
    "sigmoid_contrastive_loss": ("all", "masked"),
}
CHECKPOINT_POLICIES = (
    None,
    jax.checkpoint_policies.nothing_saveable,
    jax.checkpoint_policies.everything_saveable,
    jax.checkpoint_policies.dots_saveable,
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
)


def _frozen(live: dict) -> dict:
    return jax.tree.map(jax.lax.stop_gradient, live)


SECOND_POINT = 1.25  # vmap runs the loss at the arguments and at every differentiable argument times this


def _stacked(arguments: dict) -> dict:
    return {name: jnp.stack([value, value * SECOND_POINT]) for name, value in arguments.items()}


# A pattern takes the objective (a function of the differentiable arguments, of which ``live`` are
# perturbed), the live arguments, the differentiable arguments and the case's index, and returns what is
# compared; its ``expected`` gives the same from the materialised loss's value and gradient at the arguments
# and at the second point (``reference(point)`` -> (value, gradient of every differentiable argument)).
class Pattern(NamedTuple):
    run: Callable
    expected: Callable


def _times(factor):
    return lambda reference, subset, index: _restricted(reference(0)[1], subset, factor)


def _restricted(gradient: dict, subset, factor=1.0) -> dict:
    return {name: factor * gradient[name] for name in subset}


def _plain(objective, live, arguments, index):
    return jax.grad(objective)(live)


def _twice(objective, live, arguments, index):
    """Several calls in one objective, each differentiating another subset (the issue's two heads), and a
    frozen view of all of them."""
    names = list(live)

    def objective_of_three(live):
        first = {**_frozen(live), names[0]: live[names[0]]}
        rest = {**live, names[0]: jax.lax.stop_gradient(live[names[0]])}
        return objective(first) + objective(rest) + 0.5 * objective(_frozen(live))

    return jax.grad(objective_of_three)(live)


def _scan(objective, live, arguments, index):
    """Gradient accumulation over micro-steps: weights 1 and 0.5."""

    def accumulate(live):
        step = lambda total, scale: (total + scale * objective(live), None)  # noqa: E731
        return jax.lax.scan(step, jnp.zeros((), jnp.float32), jnp.array([1.0, 0.5], jnp.float32))[0]

    return jax.grad(accumulate)(live)


def _fori_loop(objective, live, arguments, index):
    return jax.grad(lambda live: jax.lax.fori_loop(0, 2, lambda i, total: total + objective(live), 0.0))(live)


def _checkpoint(objective, live, arguments, index):
    policy = CHECKPOINT_POLICIES[index % len(CHECKPOINT_POLICIES)]
    return jax.grad(jax.checkpoint(objective, policy=policy))(live)


def _cond(objective, live, arguments, index):
    """A predicate computed from the data, true for even cases and false for odd ones: both branches compared."""

    def branch(live):
        first = jax.tree.leaves(live)[0]
        predicate = jnp.logical_xor(jnp.all(jnp.isfinite(first)), index % 2 == 1)
        return jax.lax.cond(predicate, objective, lambda live: 2 * objective(live), live)

    return jax.grad(branch)(live)


def _switch(objective, live, arguments, index):
    branches = [lambda live: 3 * objective(live), objective]
    return jax.grad(lambda live: jax.lax.switch(jnp.int32(index % 2), branches, live))(live)


def _vmapped(objective, arguments):
    """The objective over both points; the arguments that are not live are constants of the same stack."""
    stacked_constants = _stacked(_frozen(arguments))
    return lambda stacked_live: jax.vmap(lambda a: objective(a))({**stacked_constants, **stacked_live})


def _grad_of_vmap(objective, live, arguments, index):
    return jax.grad(lambda stacked: jnp.sum(_vmapped(objective, arguments)(stacked)))(_stacked(live))


def _vmap_of_grad(objective, live, arguments, index):
    stacked_constants = _stacked(_frozen(arguments))
    names = list(live)
    return jax.vmap(lambda a: jax.grad(lambda perturbed: objective({**a, **perturbed}))({n: a[n] for n in names}))(
        {**stacked_constants, **_stacked(live)}
    )


def _both_points(reference, subset, index):
    at_first, at_second = reference(0)[1], reference(1)[1]
    return {name: jnp.stack([at_first[name], at_second[name]]) for name in subset}


def _vjp(objective, live, arguments, index):
    value, pullback = jax.vjp(objective, live)
    return value, pullback(jnp.float32(1.5))[0]


def _jit_value_and_grad(objective, live, arguments, index):
    return jax.jit(jax.value_and_grad(objective))(live)


PATTERNS = {
    # every subset of the differentiable arguments meets these
    "plain": Pattern(_plain, _times(1.0)),
    "twice": Pattern(_twice, _times(1.0)),
    "scan": Pattern(_scan, _times(1.5)),
    "checkpoint": Pattern(_checkpoint, _times(1.0)),
    "grad_of_vmap": Pattern(_grad_of_vmap, _both_points),
    "cond": Pattern(
        _cond, lambda reference, subset, index: _times(1.0 if index % 2 == 0 else 2.0)(reference, subset, index)
    ),
    # each argument alone and all of them together meet these
    "fori_loop": Pattern(_fori_loop, _times(2.0)),
    "switch": Pattern(
        _switch, lambda reference, subset, index: _times(3.0 if index % 2 == 0 else 1.0)(reference, subset, index)
    ),
    "vmap_of_grad": Pattern(_vmap_of_grad, _both_points),
    "vjp": Pattern(_vjp, lambda reference, subset, index: (reference(0)[0], _times(1.5)(reference, subset, index))),
    "jit_value_and_grad": Pattern(
        _jit_value_and_grad, lambda reference, subset, index: (reference(0)[0], _times(1.0)(reference, subset, index))
    ),
}
# Every subset of the differentiable arguments under two uses in one objective and under batching; each argument
# alone and all of them under the other patterns (191 cases; the 331 of every subset under six patterns took four
# minutes of the suite).
EVERY_SUBSET = ("twice", "grad_of_vmap")


def _subsets(names):
    return [subset for size in range(1, len(names) + 1) for subset in itertools.combinations(names, size)]


def _cases():
    cases = []
    for loss in LOSSES:
        alone_and_all = [(name,) for name in loss.differentiable] + [loss.differentiable]
        for pattern in PATTERNS:
            every = pattern in EVERY_SUBSET and loss.every_subset
            subsets = _subsets(loss.differentiable) if every else alone_and_all
            cases += [(loss, subset, pattern) for subset in subsets]
    random.Random(20261204).shuffle(cases)
    return cases


@functools.cache
def _materialised_reference(loss_name: str, reduction: str, point: int):
    """The materialised loss's value and gradient in every differentiable argument, at the arguments (point 0)
    or at the second point (1)."""
    loss = next(loss for loss in LOSSES if loss.name == loss_name)
    differentiable = {name: jnp.asarray(loss.arguments[name]) for name in loss.differentiable}
    if point:
        differentiable = {name: value * SECOND_POINT for name, value in differentiable.items()}
    objective = lambda d: loss.materialised(reduction, **{**loss.arguments, **d})  # noqa: E731
    return jax.value_and_grad(objective)(differentiable)


CASES = _cases()


@pytest.mark.parametrize(
    "index", range(len(CASES)), ids=[f"{loss.name}-{'+'.join(subset)}-{pattern}" for loss, subset, pattern in CASES]
)
def test_every_subset_and_pattern_equals_the_materialised_loss(index):
    """Every subset of the differentiable arguments under two patterns, each argument alone and all together
    under nine more, for both losses, in a shuffled order that xdist spreads; each case is one jitted program."""
    loss, subset, pattern = CASES[index]
    reduction = REDUCTIONS[loss.name][index % len(REDUCTIONS[loss.name])]
    arguments = {name: jnp.asarray(loss.arguments[name]) for name in loss.differentiable}
    constants = {name: value for name, value in loss.arguments.items() if name not in loss.differentiable}

    def objective(differentiable):
        return loss.fused(reduction, **constants, **differentiable)

    def case(live):
        of_live = lambda perturbed: objective({**arguments, **perturbed})  # noqa: E731
        return PATTERNS[pattern].run(of_live, live, arguments, index)

    expected = PATTERNS[pattern].expected(
        functools.partial(_materialised_reference, loss.name, reduction), subset, index
    )
    got = jax.jit(case)({name: arguments[name] for name in subset})
    for got_leaf, expected_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        # float32 summation-order rounding, relative to the largest entry of each gradient
        scale = float(np.max(np.abs(expected_leaf)))
        np.testing.assert_allclose(got_leaf, expected_leaf, rtol=1e-5, atol=1e-5 * scale, err_msg=reduction)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.name)
@pytest.mark.parametrize("order", ["jacfwd(jacrev)", "jacrev(jacrev)"])
def test_hessians_equal_the_materialised_loss(loss, order):
    """Forward-over-reverse (jax.hessian) and reverse-over-reverse, in every differentiable argument at once."""
    second = jax.jacfwd if order.startswith("jacfwd") else jax.jacrev
    reduction = REDUCTIONS[loss.name][-1]
    live = {name: jnp.asarray(loss.arguments[name]) for name in loss.differentiable}

    def hessian(function):
        objective = lambda live: function(reduction, **{**loss.arguments, **live})  # noqa: E731
        return second(jax.jacrev(objective))(live)

    for got, expected in zip(
        jax.tree.leaves(hessian(loss.fused)), jax.tree.leaves(hessian(loss.materialised)), strict=True
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(expected))))


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.name)
def test_forward_mode_is_the_documented_type_error_after_any_gradient(loss):
    """jax.jvp raises JAX's custom_vjp TypeError, whatever was differentiated before in the process."""
    name = loss.differentiable[-1]
    value = jnp.asarray(loss.arguments[name])
    objective = lambda v: loss.fused(REDUCTIONS[loss.name][0], **{**loss.arguments, name: v})  # noqa: E731
    jax.grad(objective)(value)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(objective, (value,), (value,))
