"""One optimizer step of the classifier fused into the loss's chunk loop: no gradient of the kernel's size.

The loop is ``_chunks.row_losses_and_updates``; what is here is the optimizer's side: which optimizers can be
applied a chunk at a time (read from their update's program), which state leaves are laid out by chunks, and
the 16-bit parameters rounded stochastically.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbce import _chunks, _cores, _linear
from jaxbce._arguments import Arg, Role
from jaxbce._fused_arguments import Options, by_chunks, checked_arguments, concrete_class_shards
from jaxbce._jit import jit_loss
from jaxbce._numerics import round_stochastically, weighted
from jaxbce._sharding import explicit_spec, with_auto_axes

# The primitives of an elementwise update: each output element is a function of the same element of its array
# operands (and of scalars). An optimizer's update made only of these (and of anything on scalars: counts,
# schedules) can be applied to one chunk of classes at a time.
_ELEMENTWISE = frozenset({
    "abs", "add", "and", "atan2", "cbrt", "ceil", "clamp", "convert_element_type", "copy", "copy_p", "cos", "cosh",
    "div", "eq", "erf", "erf_inv", "exp", "exp2", "expm1", "floor", "ge", "gt", "imag", "integer_pow", "is_finite",
    "le", "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or", "pow",
    "real", "reduce_precision", "rem", "round", "rsqrt", "select_n", "sign", "sin", "sinh", "sqrt", "square",
    "stop_gradient", "sub", "tan", "tanh", "xor",
})  # fmt: skip


def _sub_jaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def _not_elementwise(jaxpr) -> str | None:
    """What in ``jaxpr`` reads more than one element of an array to form an element, or None."""
    for eqn in jaxpr.eqns:
        operands = [getattr(v.aval, "shape", ()) for v in eqn.invars]
        results = [getattr(v.aval, "shape", ()) for v in eqn.outvars]
        if all(shape == () for shape in (*operands, *results)):
            continue  # scalars: the step count, a schedule
        inner = list(_sub_jaxprs(eqn.params))
        if inner:
            found = next((what for what in map(_not_elementwise, inner) if what), None)
            if found:
                return found
            continue
        name = eqn.primitive.name
        if name == "broadcast_in_dim" and operands[0] == ():
            continue
        if name in _ELEMENTWISE and all(shape in ((), results[0]) for shape in operands):
            continue
        return f"{name} on arrays of shapes {', '.join(str(s) for s in operands)}"
    return None


def _check_opt_state(optimizer, params: dict, opt_state) -> None:
    """A ``TypeError`` where ``opt_state`` is not of the tree that ``optimizer.init(params)`` makes (the state of
    another optimizer, or of other parameters), before the optimizer fails inside on a missing field."""
    expected = jax.tree.structure(jax.eval_shape(optimizer.init, params))
    got = jax.tree.structure(opt_state)
    if got != expected:
        raise TypeError(
            f"linear_binary_cross_entropy_update(): opt_state does not match optimizer.init(params): its tree is "
            f"{got}, and optimizer.init(params) makes {expected}. Pass opt_state = optimizer.init(params) of this "
            "optimizer (a state from another optimizer, or from other parameters, cannot be updated by it)"
        )


def _check_elementwise(optimizer, params: dict, opt_state) -> None:
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (params, opt_state, params))
    try:
        program = jax.make_jaxpr(optimizer.update)(*abstract)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"linear_binary_cross_entropy_update(): optimizer.update fails on params and opt_state ({error}); pass "
            "opt_state = optimizer.init(params)"
        ) from error
    found = _not_elementwise(program.jaxpr)
    if found:
        raise TypeError(
            f"linear_binary_cross_entropy_update(): the optimizer's update is not elementwise (it applies {found}). "
            "The fused update applies it to one chunk of classes at a time, so each parameter's update may depend "
            "only on its own gradient, state and value, and on scalars such as the step count: global-norm "
            "clipping, factored second moments (Adafactor) and other updates that read the whole gradient cannot "
            "be fused. Use jax.grad of linear_binary_cross_entropy and optimizer.update for those."
        )


def _class_axes(opt_state, kernel: jax.Array, bias: jax.Array | None, kernel_axis: int) -> list[int | None]:
    """For each leaf of the optimizer state, its class axis where it is a per-parameter array (the shape of the
    kernel or of the bias: laid out by chunks), None where it is a scalar (the step count, a schedule's state:
    read whole)."""
    axes = []
    for leaf in jax.tree.leaves(opt_state):
        shape = np.shape(leaf)
        if shape not in ((), kernel.shape, *([] if bias is None else [bias.shape])):
            raise TypeError(
                f"linear_binary_cross_entropy_update(): opt_state holds an array of shape {shape}, neither a "
                f"scalar nor of the shape of a parameter (kernel {kernel.shape}, bias "
                f"{None if bias is None else bias.shape}): pass optimizer.init(params) of an elementwise optimizer"
            )
        axes.append(None if shape == () else kernel_axis if shape == kernel.shape else -1)
    return axes


def _chunk_update(optimizer, opt_state, axes: list[int | None], key: jax.Array | None):
    """The update loop's ``update``: ``optimizer.update`` of chunk ``j``'s gradients, state and parameters, and
    ``optax.apply_updates``; the scalar state (the step count, schedules) is read from ``opt_state`` as given at
    every chunk, so that it advances once per call.

    Without ``key`` the update is Optax's: the gradients in the parameters' dtypes, each result in its own. With
    ``key`` every 16-bit floating parameter and state array is widened to float32, updated with the float32
    gradient, and rounded back stochastically with random numbers from ``fold_in(key, j)``."""
    state_tree = jax.tree.structure(opt_state)
    scalars = jax.tree.leaves(opt_state)

    def update(j, kernel_gradient, bias_gradient, old: _chunks.Head) -> _chunks.Head:
        chunk = {"kernel": old.kernel}
        gradients = {"kernel": kernel_gradient}
        if old.bias is not None:
            chunk["bias"], gradients["bias"] = old.bias, bias_gradient
        state = [initial if axis is None else leaf for leaf, initial, axis in zip(old.rest, scalars, axes, strict=True)]
        stored = jax.tree.leaves((chunk, state))
        if key is None:
            gradients = {name: gradient.astype(chunk[name].dtype) for name, gradient in gradients.items()}
        else:
            chunk, state = jax.tree.map(_widened, (chunk, state))
        updates, state = optimizer.update(gradients, jax.tree.unflatten(state_tree, state), chunk)
        new = {name: chunk[name] + updates[name] for name in chunk}  # optax.apply_updates
        keys = [None] * len(stored) if key is None else jax.random.split(jax.random.fold_in(key, j), len(stored))
        written = [
            _narrowed(value, like.dtype, leaf_key)
            for value, like, leaf_key in zip(jax.tree.leaves((new, state)), stored, keys, strict=True)
        ]
        new, state = jax.tree.unflatten(jax.tree.structure((new, state)), written)
        return _chunks.Head(new["kernel"], new.get("bias"), jax.tree.leaves(state))

    return update


def _is_16_bit_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2


def _widened(array: jax.Array) -> jax.Array:
    return array.astype(jnp.float32) if _is_16_bit_float(array.dtype) else array


def _narrowed(value: jax.Array, dtype, key: jax.Array | None) -> jax.Array:
    """``value`` in ``dtype``: rounded stochastically where ``key`` is given and ``dtype`` is a 16-bit float."""
    if key is None or not _is_16_bit_float(dtype):
        return value.astype(dtype)
    return round_stochastically(value, dtype, key)


def _one_key(name: str, key: jax.Array) -> jax.Array:
    """``key`` as a typed key array of shape ``()``: one ``jax.random.key(seed)``, or a raw
    ``jax.random.PRNGKey(seed)`` of the default implementation."""
    key = key if isinstance(key, jax.Array) else jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
        return key
    if key.dtype == jnp.uint32 and key.shape == jax.random.key_data(jax.random.key(0)).shape:
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"{name}: key must be one PRNG key, jax.random.key(seed) (or a raw jax.random.PRNGKey(seed)), got "
        f"{key.dtype} of shape {key.shape}"
    )


def _update_by_chunks(options: Options, optimizer, axes: list[int | None], params: dict, opt_state, key, arrays):
    config, parameters, targets, example_weight, divisor = by_chunks(options, arrays)
    layout, kernel_axis = config.layout, options.kernel_axis
    head = _chunks.Head(
        _chunks.by_chunk(params["kernel"], layout, kernel_axis),
        None if arrays.bias is None else _chunks.by_chunk(params["bias"], layout),
        [
            leaf if axis is None else _chunks.by_chunk(leaf, layout, axis)
            for leaf, axis in zip(jax.tree.leaves(opt_state), axes, strict=True)
        ],
    )
    row_scale = example_weight / divisor
    update = _chunk_update(optimizer, opt_state, axes, key)
    rows, features_grad, head = _chunks.row_losses_and_updates(
        config, parameters, targets, row_scale, head, axes, update
    )
    new_params = {"kernel": _chunks.from_chunks(head.kernel, layout, kernel_axis)}
    if head.bias is not None:
        new_params["bias"] = _chunks.from_chunks(head.bias, layout)
    new_state = [
        leaf if axis is None else _chunks.from_chunks(leaf, layout, axis)
        for leaf, axis in zip(head.rest, axes, strict=True)
    ]
    loss = jnp.sum(weighted(row_scale, rows)).astype(options.out_dtype)
    features_grad = features_grad.reshape(arrays.features.shape).astype(arrays.features.dtype)
    return loss, features_grad, new_params, jax.tree.unflatten(jax.tree.structure(opt_state), new_state)


@jit_loss(
    static=("optimizer", "label_smoothing", "ignore_label", "reduction", "chunk_size", "precision", "kernel_layout"),
    trees=("params", "opt_state"),
    hint=concrete_class_shards,
)
def linear_binary_cross_entropy_update(
    features: jax.typing.ArrayLike,
    params: dict[str, jax.typing.ArrayLike],
    opt_state: Any,
    labels: jax.typing.ArrayLike | None = None,
    *,
    positives: jax.typing.ArrayLike | None = None,
    optimizer: Any,
    weight: jax.typing.ArrayLike | None = None,
    pos_weight: jax.typing.ArrayLike | None = None,
    label_smoothing: float = 0.0,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    precision: jax.lax.PrecisionLike = None,
    key: jax.Array | None = None,
    kernel_layout: str = "in_out",
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], Any]:
    """One optimizer step of the classifier ``features @ kernel + bias`` fused into the loss's chunk loop: no
    gradient of the kernel's size ever exists.

    For each chunk of classes the loop forms the logits, the loss, and the chunk's gradients in the kernel and
    the bias (as :func:`linear_binary_cross_entropy` does), applies ``optimizer.update`` to that chunk's
    gradients, state and parameters, and writes the new parameters and state over the chunk's old ones. The
    rest of the model gets the loss and its gradient in ``features``, for the ``vjp`` of the layers below:

        loss, features_grad, params, opt_state = linear_binary_cross_entropy_update(
            features, params, opt_state, labels, optimizer=optimizer)
        body_grads = body_vjp(features_grad)

    What is held beyond the arguments and the results is the chunk's arrays (``rows x chunk``): with the step
    jitted and ``params`` and ``opt_state`` donated (``jax.jit(step, donate_argnums=...)``) the kernel and the
    optimizer state are updated in place, and a step takes the memory of the parameters, their state and one
    chunk, where the fused loss followed by ``optimizer.update`` also holds the kernel's gradient and the
    updates (docs/benchmarks.md gives both). That takes XLA's in-place loop writes; an older XLA that does not
    give them copies each updated array once per step (still no kernel-sized gradient).

    Sharding: with the kernel, the bias and the state sharded over classes (Explicit or Auto axes), each device
    updates its own columns and every result keeps its argument's sharding. Inside ``shard_map`` with the
    classes split, each shard's loss and ``features_grad`` are those of its classes: use ``reduction="sum"``
    (a mean would divide by the local classes) and ``psum`` the two over the class axis.

    A 16-bit classifier. Without ``key``, bfloat16 or float16 parameters are updated in their own dtype, as
    ``optax.apply_updates`` does; then an update below half a weight's spacing (2^-9 of it in bfloat16) is lost,
    and a 16-bit Adam second moment never moves. With ``key`` (ELMO's recipe, ICML 2025), every 16-bit parameter
    and optimizer-state array is widened to float32 for the update, which is applied to the float32 gradient,
    and rounded back *stochastically*: to the neighbour below or above with probabilities that make the expected
    result the float32 one. The kernel and Adam's moments can then all be 16-bit, 6 bytes per weight where
    float32 takes 12 (bfloat16 for Adam: float16's range cannot hold the small second moments of rare classes,
    and such a head diverged in examples/extreme_multilabel.py). Pass a new key at every step
    (``jax.random.fold_in(key, step)``); inside ``shard_map`` also fold in ``jax.lax.axis_index`` of the class
    axis, or every shard rounds with the same numbers. float32 parameters are not rounded: there ``key`` changes
    nothing. On the CPU, two costs: the random numbers cost about a matmul per rounded array
    (``jax.random.key(seed, impl="rbg")`` is cheaper), and XLA:CPU cannot write bfloat16 in place in a loop, so
    most bfloat16 arrays are copied once per step (float16 ones are not).

    Args:
      features: ``(..., D)`` float16, bfloat16, float32 or float64: the last hidden layer.
      params: ``{"kernel": (D, C), "bias": (C,)}`` (the bias optional), Flax ``Dense``'s names; the kernel
        ``(C, D)`` with ``kernel_layout="out_in"``.
      opt_state: ``optimizer.init(params)``.
      labels: dense labels ``(..., C)`` or a ``BCOO`` of them, or None with ``positives``, as for
        :func:`linear_binary_cross_entropy`.
      positives: sparse labels ``(..., P)``, class indices padded with ``-1``.
      optimizer: static Optax ``GradientTransformation`` whose update is elementwise: each parameter's update
        depends only on its own gradient, state and value and on scalars (the step count, a schedule): SGD,
        momentum, Adam, AdamW, Lion, RMSProp and chains of them, with schedules and elementwise clipping. One
        that reads the whole gradient (global-norm clipping, Adafactor's factored moments) is a ``TypeError``
        naming the operation, found by reading its update's program.
      weight: optional non-negative weight broadcastable to the logits' shape, as for
        :func:`linear_binary_cross_entropy`.
      pos_weight: optional non-negative weight of the positive term, a scalar or ``(C,)``.
      label_smoothing: static float ``s`` in [0, 1]; labels become ``y * (1 - s) + s / 2``.
      where: optional per-example bool mask broadcastable to ``features.shape[:-1]``.
      ignore_label: static label value to ignore in dense ``labels``, or None.
      chunk_size: static number of classes per chunk, or None to choose it from the shapes, as for
        :func:`linear_binary_cross_entropy` (on several devices a multiple of the class shards).
      precision: static ``jax.lax.Precision`` of the matmuls.
      kernel_layout: static ``"in_out"`` (``params["kernel"]`` is ``(D, C)``) or ``"out_in"`` (``(C, D)``,
        Equinox and PyTorch), updated in place in its own layout.
      reduction: ``"sum"``, ``"mean"`` (default) or ``"batchmean"``: the step needs a scalar loss.
      key: optional PRNG key (``jax.random.key``, or a raw ``jax.random.PRNGKey``): round 16-bit parameters and
        state stochastically, as above. None (default): Optax's update in the parameters' dtypes.

    Returns:
      ``(loss, features_grad, params, opt_state)``: the loss and its gradient in ``features`` equal the value
      and ``features`` gradient of :func:`linear_binary_cross_entropy` with the same arguments, and ``params``
      and ``opt_state`` those of ``optax.apply_updates(params, updates)`` and ``optimizer.update(grads,
      opt_state, params)`` for its gradient ``grads`` (to float32 rounding). Scalar state
      (Adam's count, a schedule's step) advances once per call. The parameters and state keep their dtypes;
      with ``key`` their 16-bit arrays are the float32 step's rounded stochastically. The loss is in the promoted
      dtype of ``features`` and the kernel, as for :func:`linear_binary_cross_entropy`: bfloat16 for bfloat16
      features and a bfloat16 head (pass float32 features for a loss to log).

    Raises:
      TypeError: an optimizer whose update is not elementwise; an ``opt_state`` leaf that is neither a scalar
        nor shaped like a parameter; a ``key`` that is not one PRNG key; the argument errors of
        :func:`linear_binary_cross_entropy`.
      ValueError: ``params`` without ``"kernel"`` or with other keys; ``reduction="none"``; the argument errors
        of :func:`linear_binary_cross_entropy`.

    Example:
      >>> import jax.numpy as jnp, jaxbce, optax
      >>> features = jnp.array([[1.0, -2.0], [0.5, 0.0]])
      >>> params = {"kernel": jnp.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]), "bias": jnp.zeros(3)}
      >>> optimizer = optax.sgd(0.5)
      >>> labels = jnp.array([[1, 0, 0], [0, 1, 1]])
      >>> loss, features_grad, params, opt_state = jaxbce.linear_binary_cross_entropy_update(
      ...     features, params, optimizer.init(params), labels, optimizer=optimizer)
      >>> loss
      Array(0.6109767, dtype=float32)
      >>> jaxbce.linear_binary_cross_entropy(features, params["kernel"], labels, bias=params["bias"])
      Array(0.5873575, dtype=float32)
    """
    return _step(
        "linear_binary_cross_entropy_update()", _cores.bce(label_smoothing),
        Arg("pos_weight", pos_weight, Role.NON_NEGATIVE), features, params, opt_state, labels, optimizer=optimizer,
        key=key, positives=positives, weight=weight, where=where, ignore_label=ignore_label, reduction=reduction,
        chunk_size=chunk_size, precision=precision, kernel_layout=kernel_layout,
    )  # fmt: skip


def _step(
    name: str, core: _cores.Core, per_class: Arg, features, params, opt_state, labels, *, optimizer, key, **arguments
):
    """The path of every fused update: checks, then the optimizer's layout, then the loop with ``core``."""
    reduction = arguments["reduction"]
    if reduction not in ("sum", "mean", "batchmean"):
        raise ValueError(
            f"{name}: reduction must be 'sum', 'mean' or 'batchmean' for an update (a scalar loss), got {reduction!r}"
        )
    if not isinstance(params, dict) or "kernel" not in params or set(params) - {"kernel", "bias"}:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f'{name}: params must be {{"kernel": (D, C), "bias": (C,)}} (bias optional), got {keys}')
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(
            f"{name}: optimizer must be an Optax GradientTransformation (init and update), such as optax.adam(1e-3), "
            f"got {type(optimizer).__name__}"
        )
    kernel, bias = params["kernel"], params.get("bias")
    options, arrays = checked_arguments(
        name, features, kernel, core=core, per_class=per_class, labels=labels, bias=bias, **arguments
    )
    key = None if key is None else _one_key(name, key)
    params = {leaf: arrays.kernel if leaf == "kernel" else arrays.bias for leaf in params}
    _check_opt_state(optimizer, params, opt_state)
    _check_elementwise(optimizer, params, opt_state)
    axes = _class_axes(opt_state, arrays.kernel, arrays.bias, options.kernel_axis)
    # Under Explicit axes each result keeps its argument's sharding (the loss is replicated).
    spec_of = lambda array: jax.sharding.PartitionSpec(*(explicit_spec(array) or ()))  # noqa: E731
    out_specs = (jax.sharding.PartitionSpec(), spec_of(arrays.features), *jax.tree.map(spec_of, (params, opt_state)))
    update = functools.partial(_update_by_chunks, options, optimizer, axes)
    return with_auto_axes(update, params, opt_state, key, arrays, out_specs=out_specs)


class _Family(NamedTuple):
    """How :func:`linear_update` builds a fused loss's core from its options."""

    build: Callable[..., _cores.Core]  # the core from the static options
    options: tuple[str, ...]  # the core's static options
    per_class: str  # the per-class array's name
    role: Role
    default: Any  # the per-class array's default


_FAMILIES = {
    _linear.linear_binary_cross_entropy: _Family(
        _cores.bce, ("label_smoothing", "poly_epsilon"), "pos_weight", Role.NON_NEGATIVE, None
    ),
    _linear.linear_sigmoid_focal_loss: _Family(
        _cores.sigmoid_focal, ("gamma", "label_smoothing", "poly_epsilon"), "alpha", Role.FRACTION, 0.25
    ),
    _linear.linear_asymmetric_loss: _Family(
        _cores.asymmetric,
        ("gamma_pos", "gamma_neg", "clip", "stop_focusing_gradient"),
        "pos_weight",
        Role.NON_NEGATIVE,
        None,
    ),
}
# Every fused loss's options besides the core's: the static ones, and the arrays.
_SHARED_STATIC = ("ignore_label", "reduction", "chunk_size", "precision", "kernel_layout")
_SHARED = ("positives", "weight", "where", *_SHARED_STATIC)


def linear_update(
    loss: Callable[..., jax.Array],
    features: jax.typing.ArrayLike,
    params: dict[str, jax.typing.ArrayLike],
    opt_state: Any,
    labels: jax.typing.ArrayLike | None = None,
    *,
    optimizer: Any,
    key: jax.Array | None = None,
    **options: Any,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], Any]:
    """One optimizer step of the classifier fused into the chunk loop of any fused loss of the sigmoid family.

    :func:`linear_binary_cross_entropy_update` for the loss ``loss`` (:func:`linear_binary_cross_entropy`,
    :func:`linear_sigmoid_focal_loss` or :func:`linear_asymmetric_loss`) with its keyword arguments ``options``:
    the same loop, the same guarantees (the loss and ``features`` gradient equal ``loss``'s, the parameters and
    state equal Optax's step on the materialised gradient, no array of the kernel's size besides them, in place
    when donated, ``key`` for 16-bit heads), with ``loss``'s own elementwise core in it.
    :func:`linear_binary_cross_entropy_update` is its BCE case.

    Args:
      loss: one of the three fused losses (the function itself).
      features: as for :func:`linear_binary_cross_entropy_update`.
      params: as for :func:`linear_binary_cross_entropy_update`.
      opt_state: as for :func:`linear_binary_cross_entropy_update`.
      labels: as for :func:`linear_binary_cross_entropy_update`.
      optimizer: as for :func:`linear_binary_cross_entropy_update`.
      key: as for :func:`linear_binary_cross_entropy_update`.
      **options: ``loss``'s keyword arguments other than ``bias`` (in ``params``): its static options (``gamma``,
        ``poly_epsilon``, ...), its per-class array (``pos_weight``, or the focal loss's ``alpha``) and the shared
        ones (``positives``, ``weight``, ``where``, ``ignore_label``, ``reduction``, ``chunk_size``,
        ``precision``, ``kernel_layout``); an option ``loss`` does not take is a ``TypeError``.

    Returns:
      ``(loss, features_grad, params, opt_state)`` as for :func:`linear_binary_cross_entropy_update`.

    Example:
      >>> import jax.numpy as jnp, optax, jaxbce
      >>> features = jnp.array([[1.0, -2.0], [0.5, 0.0]])
      >>> params = {"kernel": jnp.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]), "bias": jnp.zeros(3)}
      >>> optimizer = optax.sgd(0.5)
      >>> labels = jnp.array([[1, 0, 0], [0, 1, 1]])
      >>> loss, _, new_params, _ = jaxbce.linear_update(jaxbce.linear_sigmoid_focal_loss, features, params,
      ...     optimizer.init(params), labels, optimizer=optimizer, gamma=1.0)
      >>> loss
      Array(0.14050695, dtype=float32)
      >>> jaxbce.linear_sigmoid_focal_loss(features, params["kernel"], labels, bias=params["bias"], gamma=1.0)
      Array(0.14050695, dtype=float32)
    """
    family = _FAMILIES.get(loss) if callable(loss) else None
    if family is None:
        raise TypeError(
            "linear_update(): loss must be one of jaxbce.linear_binary_cross_entropy, "
            f"jaxbce.linear_sigmoid_focal_loss and jaxbce.linear_asymmetric_loss, got {loss!r}"
        )
    allowed = {*family.options, family.per_class, *_SHARED}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"linear_update(): {loss.__name__} takes no options {unknown}; it takes {sorted(allowed)}")
    core_options = tuple((option, options.pop(option)) for option in family.options if option in options)
    per_class = options.pop(family.per_class, family.default)
    if isinstance(per_class, str | bytes | dict):  # named here: the jitted body calls it per_class
        raise TypeError(f"linear_update(): {family.per_class} must be an array, got {type(per_class).__name__}")
    return _linear_update(
        features, params, opt_state, labels, family=loss, core_options=core_options, per_class=per_class,
        optimizer=optimizer, key=key, **options,
    )  # fmt: skip


def _jitted_update(
    features: jax.typing.ArrayLike,
    params: dict[str, jax.typing.ArrayLike],
    opt_state: Any,
    labels: jax.typing.ArrayLike | None = None,
    *,
    family: Callable[..., jax.Array],
    core_options: tuple,
    per_class: jax.typing.ArrayLike | float | None = None,
    optimizer: Any,
    key: jax.Array | None = None,
    positives: jax.typing.ArrayLike | None = None,
    weight: jax.typing.ArrayLike | None = None,
    where: jax.typing.ArrayLike | None = None,
    ignore_label: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    precision: jax.lax.PrecisionLike = None,
    kernel_layout: str = "in_out",
):
    """:func:`linear_update`'s jitted body: the options split into the core's and the loop's."""
    spec = _FAMILIES[family]
    if spec.per_class == "alpha":
        _cores.check_alpha(per_class)
    return _step(
        "linear_update()", spec.build(**dict(core_options)), Arg(spec.per_class, per_class, spec.role), features,
        params, opt_state, labels, optimizer=optimizer, key=key, positives=positives, weight=weight, where=where,
        ignore_label=ignore_label, reduction=reduction, chunk_size=chunk_size, precision=precision,
        kernel_layout=kernel_layout,
    )  # fmt: skip


_jitted_update.__name__ = "linear_update"  # what the errors of jit_loss name
_linear_update = jit_loss(
    static=(
        "family",
        "core_options",
        "optimizer",
        "ignore_label",
        "reduction",
        "chunk_size",
        "precision",
        "kernel_layout",
    ),
    static_or_array=("per_class",),
    trees=("params", "opt_state"),
    hint=concrete_class_shards,
)(_jitted_update)
