"""linear_binary_cross_entropy_update: one optimizer step of the classifier fused into the chunk loop.

The reference everywhere is the materialised step with Optax: ``jax.value_and_grad`` of
:func:`jaxbce.linear_binary_cross_entropy` in ``features`` and the head's parameters, then ``optimizer.update``
and ``optax.apply_updates``. The fused step must give the same loss, features gradient, parameters and state.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import devices
import jaxbce
from jax_compat import set_mesh

N, D, C = 12, 6, 40

OPTIMIZERS = {
    "sgd": optax.sgd(0.1),
    "momentum": optax.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": optax.adam(1e-2),
    "adamw": optax.adamw(1e-2, weight_decay=0.1),
    "lion": optax.lion(1e-3),
    "rmsprop": optax.rmsprop(1e-2),
    # A chain with an elementwise clip and a schedule: the schedule's step advances once per call.
    "chain+schedule": optax.chain(
        optax.clip(0.05), optax.scale_by_adam(), optax.scale_by_schedule(optax.exponential_decay(0.1, 1, 0.5))
    ),
}


def _problem(seed=0, bias=True):
    rng = np.random.default_rng(seed)
    features = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    params = {"kernel": jnp.asarray(rng.normal(size=(D, C)) / 2, jnp.float32)}
    if bias:
        params["bias"] = jnp.asarray(rng.normal(size=C) - 1, jnp.float32)
    labels = jnp.asarray(rng.uniform(size=(N, C)) < 0.2, jnp.float32)
    return features, params, labels


def _materialised_step(optimizer, features, params, opt_state, labels, **options):
    """The gradient of the fused loss (whose own tests hold it to the materialised loss's) and Optax's step; the
    chunk size does not change the numbers, and is left to choose here."""
    options.pop("chunk_size", None)

    def loss(features, params):
        return jaxbce.linear_binary_cross_entropy(
            features, params["kernel"], labels, bias=params.get("bias"), **options
        )

    value, (features_grad, grads) = jax.value_and_grad(loss, argnums=(0, 1))(features, params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return value, features_grad, optax.apply_updates(params, updates), opt_state


def _assert_steps_equal(got, expected, atol=2e-7):
    """Equal to float32 rounding: the gradients are the fused loss's own (the same chunk loop), the updates
    Optax's own arithmetic on them."""
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert g.shape == e.shape
        assert g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=atol)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_three_steps_equal_optax_on_the_materialised_gradient(name):
    optimizer = OPTIMIZERS[name]
    features, params, labels = _problem()
    fused_params, fused_state = params, optimizer.init(params)
    ref_params, ref_state = params, optimizer.init(params)
    step = jax.jit(functools.partial(jaxbce.linear_binary_cross_entropy_update, optimizer=optimizer, chunk_size=8))
    for _ in range(3):
        loss, features_grad, fused_params, fused_state = step(features, fused_params, fused_state, labels)
        expected = _materialised_step(optimizer, features, ref_params, ref_state, labels, chunk_size=8)
        _assert_steps_equal((loss, features_grad, fused_params, fused_state), expected)
        ref_params, ref_state = expected[2], expected[3]


@pytest.mark.parametrize(
    "options",
    [
        {"reduction": "sum"},
        {"reduction": "batchmean", "pos_weight": "per class"},
        {"weight": "per element", "where": "half the rows", "label_smoothing": 0.1},
        {"ignore_label": -1.0, "weight": "per example"},
        {"positives": True},
        {"no_bias": True, "chunk_size": 7},  # 40 classes in chunks of 7: a partial last chunk
    ],
    ids=lambda options: ",".join(options),
)
def test_options_equal_the_materialised_step(options):
    """Masks (with NaN garbage in the masked rows), weights, pos_weight, smoothing, ignored labels, sparse
    positives, no bias and a partial last chunk, with Adam."""
    optimizer = optax.adam(1e-2)
    options = dict(options)
    features, params, labels = _problem(seed=1, bias=not options.pop("no_bias", False))
    rng = np.random.default_rng(2)
    kwargs = {"chunk_size": options.pop("chunk_size", 8)}
    if options.pop("positives", False):
        positives = jnp.asarray(rng.integers(-1, C, size=(N, 5)), jnp.int32)
        kwargs["positives"], labels = positives, None
    if options.get("pos_weight") == "per class":
        kwargs["pos_weight"] = jnp.asarray(rng.uniform(0.5, 4, size=C), jnp.float32)
    if options.get("weight") == "per element":
        kwargs["weight"] = jnp.asarray(rng.uniform(0, 2, size=(N, C)), jnp.float32)
    if options.get("weight") == "per example":
        kwargs["weight"] = jnp.asarray(rng.uniform(0, 2, size=(N, 1)), jnp.float32)
    if options.get("where") == "half the rows":
        keep = np.arange(N) % 2 == 0
        kwargs["where"] = jnp.asarray(keep)
        features = jnp.where(keep[:, None], features, jnp.nan)
        labels = jnp.where(keep[:, None], labels, jnp.nan)
    if "ignore_label" in options:
        labels = jnp.where(jnp.asarray(rng.uniform(size=(N, C)) < 0.3), -1.0, labels)
        kwargs["ignore_label"] = -1.0
    for key in ("reduction", "label_smoothing"):
        if key in options:
            kwargs[key] = options[key]
    state = optimizer.init(params)
    got = jaxbce.linear_binary_cross_entropy_update(features, params, state, labels, optimizer=optimizer, **kwargs)
    expected = _materialised_step(optimizer, features, params, state, labels, **kwargs)
    _assert_steps_equal(got, expected)
    assert np.isfinite(got[1]).all()


def test_higher_rank_features_and_bfloat16_parameters():
    """(B, T, D) features; bfloat16 kernel and bias with SGD: the parameters keep their dtype."""
    optimizer = optax.sgd(0.5)
    features, params, labels = _problem(seed=3)
    features, labels = features.reshape(3, 4, D), labels.reshape(3, 4, C)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    state = optimizer.init(params)
    got = jaxbce.linear_binary_cross_entropy_update(features, params, state, labels, optimizer=optimizer)
    expected = _materialised_step(optimizer, features, params, state, labels)
    assert got[1].shape == features.shape
    assert got[2]["kernel"].dtype == jnp.bfloat16
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.float32(g), np.float32(e), rtol=1e-2, atol=1e-2)


def _float32_step_of_bfloat16_head(optimizer, features, params, labels):
    """The reference of the stochastically rounded step: Optax's step in float32 on float32 copies of bfloat16
    parameters and of their (bfloat16) initial state, with the float32 gradient of the fused loss."""
    state = optimizer.init(params)
    widened = jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a, (params, state))
    return _materialised_step(optimizer, features, *widened, labels)[2:], state


def _bfloat16_neighbours(values, tolerance):
    """The bfloat16 numbers next to each float32 value, below and above (the same where it is one), of the values
    within ``tolerance`` of it: by the bits, truncation toward zero and one unit away from it (ml_dtypes'
    bfloat16 is float32's upper 16 bits)."""
    neighbours = []
    for shifted in (values - tolerance, values + tolerance):
        bits = np.asarray(shifted, np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        neighbours += [bits.view(np.float32), (bits + np.uint32(0x10000)).view(np.float32)]
    return np.stack(neighbours)


def test_stochastic_rounding_gives_a_neighbour_of_the_float32_step_and_it_in_expectation():
    """bfloat16 kernel, bias and Adam moments with ``key``: each result is one of the two bfloat16 neighbours of
    Optax's float32 step (from float32 copies and the float32 gradient), and their mean over 4,000 keys is that
    step within 6 standard deviations (at most half a bfloat16 spacing / sqrt(4000) each); round to nearest,
    which the same bound rejects for most elements, is what the step does without ``key``. Learning rate 1e-3:
    updates around half a spacing of the weights (about 2^-9 of 0.5)."""
    optimizer, samples = optax.adam(1e-3), 4000
    features, params, labels = _problem(seed=7)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    expected, state = _float32_step_of_bfloat16_head(optimizer, features, params, labels)
    step = functools.partial(jaxbce.linear_binary_cross_entropy_update, optimizer=optimizer, chunk_size=8)
    keys = jax.random.split(jax.random.key(11), samples)
    got = jax.jit(jax.vmap(lambda key: step(features, params, state, labels, key=key)[2:]))(keys)
    nearest = step(features, params, state, labels)[2:]
    checked = 0
    for g, e, n in zip(jax.tree.leaves(got), jax.tree.leaves(expected), jax.tree.leaves(nearest), strict=True):
        if g.ndim == 1:  # Adam's count: advanced once
            assert (g == e).all()
            continue
        assert g.dtype == n.dtype == jnp.bfloat16
        g, e, n = np.float32(g), np.asarray(e), np.float32(n)
        tolerance = 2e-6 * np.abs(e) + 1e-30  # the float32 steps' own rounding
        neighbours = _bfloat16_neighbours(e, tolerance)
        assert (g[:, None] == neighbours[None]).any(axis=1).all()
        spacing = np.abs(neighbours[1] - neighbours[0])
        bound = 6 * 0.5 * spacing / np.sqrt(samples) + tolerance
        assert (np.abs(g.mean(axis=0) - e) <= bound).all()
        assert (np.abs(n - e) > bound).mean() > 0.5
        checked += e.size
    assert checked == 3 * (D * C + C)  # kernel and bias, and their two moments


def test_round_stochastically_to_float16_and_its_special_values():
    """The rounding itself, to float16 (NumPy's own float16 ``nextafter`` gives the neighbours): each result is
    one of the two float16 numbers around the float32 value, their mean over 4,000 keys is the value within 6
    standard deviations, and a value that is a float16 number, a signed zero, an infinity or a NaN is kept."""
    from jaxbce._numerics import round_stochastically

    values = np.random.default_rng(10).normal(size=64).astype(np.float32) * 10.0 ** np.arange(-3, 5).repeat(8)
    keys = jax.random.split(jax.random.key(12), 4000)
    got = np.float32(jax.jit(jax.vmap(lambda key: round_stochastically(jnp.asarray(values), jnp.float16, key)))(keys))
    below = np.where(values.astype(np.float16) <= values, values.astype(np.float16),
                     np.nextafter(values.astype(np.float16), np.float16(-np.inf)))  # fmt: skip
    above = np.nextafter(below, np.float16(np.inf))
    assert ((got == np.float32(below)) | (got == np.float32(above))).all()
    bound = 6 * 0.5 * (np.float32(above) - np.float32(below)) / np.sqrt(len(keys))
    assert (np.abs(got.mean(axis=0) - values) <= bound).all()
    special = np.array([1.5, -0.0, 0.0, np.inf, -np.inf, np.nan, 65504.0], np.float32)
    kept = np.float32(round_stochastically(jnp.asarray(special), jnp.float16, jax.random.key(0)))
    np.testing.assert_array_equal(kept, special)
    assert np.signbit(kept[1])
    assert not np.signbit(kept[2])


def test_key_leaves_float32_parameters_alone():
    """With float32 parameters and state ``key`` rounds nothing: the step is the same, bit for bit."""
    optimizer = optax.adam(1e-2)
    features, params, labels = _problem(seed=8)
    state = optimizer.init(params)
    step = functools.partial(jaxbce.linear_binary_cross_entropy_update, features, params, state, labels)
    with_key, without = step(optimizer=optimizer, key=jax.random.key(0)), step(optimizer=optimizer)
    for a, b in zip(jax.tree.leaves(with_key), jax.tree.leaves(without), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "optimizer",
    [optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), optax.adafactor(1e-3)],
    ids=["clip_by_global_norm", "adafactor"],
)
def test_an_update_that_reads_the_whole_gradient_is_a_type_error(optimizer):
    features, params, labels = _problem()
    with pytest.raises(TypeError, match=r"not elementwise \(it applies reduce_\w+ on arrays"):
        jaxbce.linear_binary_cross_entropy_update(features, params, optimizer.init(params), labels, optimizer=optimizer)


def test_argument_errors():
    features, params, labels = _problem()
    optimizer = optax.sgd(0.1)
    state = optimizer.init(params)
    update = jaxbce.linear_binary_cross_entropy_update
    momentum = optax.sgd(0.1, momentum=0.9)
    with pytest.raises(ValueError, match="reduction must be 'sum', 'mean' or 'batchmean' for an update"):
        update(features, params, state, labels, reduction="none", optimizer=optimizer)
    with pytest.raises(ValueError, match=r'params must be \{"kernel"'):
        update(features, {"w": params["kernel"]}, state, labels, optimizer=optimizer)
    with pytest.raises(TypeError, match=r"opt_state does not match optimizer\.init\(params\)"):
        update(features, params, (jnp.zeros(3),), labels, optimizer=optimizer)
    with pytest.raises(TypeError, match=r"update\(\): opt_state does not match optimizer\.init\(params\)"):
        update(features, params, optax.sgd(0.1).init(params), labels, optimizer=optax.adam(1e-3))
    broadcast = {"kernel": jnp.zeros((D, C)), "bias": jnp.zeros(1)}  # a state that broadcasts: not elementwise
    with pytest.raises(TypeError, match=r"not elementwise \(it applies add on arrays of shapes \(40,\), \(1,\)\)"):
        update(features, params, (optax.TraceState(trace=broadcast), optax.EmptyState()), labels, optimizer=momentum)
    # A state array shaped like no parameter that the update passes through: it cannot be laid out by chunks.
    carries = optax.GradientTransformation(
        lambda params: jnp.zeros(2), lambda updates, state, params=None: (updates, state)
    )
    with pytest.raises(TypeError, match=r"opt_state holds an array of shape \(2,\)"):
        update(features, params, carries.init(params), labels, optimizer=carries)
    for optimizer_value in (None, "adam"):
        with pytest.raises(TypeError, match=r"update\(\): optimizer must be an Optax GradientTransformation"):
            update(features, params, state, labels, optimizer=optimizer_value)
    with pytest.raises(ValueError, match=r'update\(\): params must be \{"kernel".*got NoneType'):
        update(features, None, state, labels, optimizer=optimizer)
    with pytest.raises(TypeError, match=r"update\(\): opt_state does not match optimizer\.init\(params\)"):
        update(features, params, None, labels, optimizer=momentum)
    with pytest.raises(TypeError, match="optimizer is a static option"):
        jax.jit(lambda lr: update(features, params, state, labels, optimizer=lr))(0.1)
    with pytest.raises(ValueError, match="kernel"):
        update(features[:, :-1], params, state, labels, optimizer=optimizer)
    for key in (jnp.zeros(3), jax.random.split(jax.random.key(0), 2), jnp.zeros((2,), jnp.int32)):
        with pytest.raises(TypeError, match=r"update\(\): key must be one PRNG key"):
            update(features, params, state, labels, optimizer=optimizer, key=key)


@pytest.mark.parametrize(
    ("name", "dtype", "key"),
    [("sgd", jnp.float32, None), ("momentum", jnp.float32, None), ("adam", jnp.float32, None),
     ("adam", jnp.float16, jax.random.key(0)), ("adam", jnp.bfloat16, jax.random.key(0))],
    ids=["sgd", "momentum", "adam", "adam-float16-stochastic", "adam-bfloat16-stochastic"],
)  # fmt: skip
def test_memory_holds_no_kernel_sized_array(name, dtype, key):
    """Compiled with params and opt_state donated (C = 2**16, chunks of 512 classes): the fused step's
    temporaries stay below an eighth of a float32 kernel whatever the optimizer's state (16-bit ones rounded
    stochastically included: their float32 values and random numbers exist a chunk at a time), and its outputs
    alias its inputs (updated in place); the fused loss followed by the optimizer holds the kernel's gradient.
    From the executables' memory_analysis(). The one exception is XLA:CPU's bfloat16, which the loop writes as
    uint16 bits: each bfloat16 array is copied once (without that, the loop converted each whole array to float32
    at every chunk). (jaxlib 0.7.0's XLA copies every updated array once per step, loop writes notwithstanding:
    make test-oldest-jax leaves this test out.)"""
    rows, dim, classes = 64, 32, 2**16
    optimizer = OPTIMIZERS[name]
    features = jax.ShapeDtypeStruct((rows, dim), jnp.float32)
    params = {
        "kernel": jax.ShapeDtypeStruct((dim, classes), dtype),
        "bias": jax.ShapeDtypeStruct((classes,), dtype),
    }
    state = jax.eval_shape(optimizer.init, params)
    positives = jax.ShapeDtypeStruct((rows, 8), jnp.int32)

    def fused(features, params, state, positives):
        return jaxbce.linear_binary_cross_entropy_update(
            features, params, state, positives=positives, optimizer=optimizer, chunk_size=512, key=key
        )

    def separate(features, params, state, positives):
        return _materialised_step(optimizer, features, params, state, None, positives=positives, chunk_size=512)

    kernel_bytes = dim * classes * jnp.dtype(dtype).itemsize
    analyses = {
        form: jax.jit(step, donate_argnums=(1, 2)).lower(features, params, state, positives).compile().memory_analysis()
        for form, step in (("fused", fused), ("separate", separate))
    }
    fused_memory, separate_memory = analyses["fused"], analyses["separate"]
    copied = 3 * (kernel_bytes + classes * 2) if dtype == jnp.bfloat16 else 0  # kernel and bias, two moments
    assert fused_memory.temp_size_in_bytes < dim * classes * 4 / 8 + copied
    if dtype == jnp.bfloat16:  # and no whole array converted back to bfloat16 (at each chunk, without the bits)
        text = jax.jit(fused, donate_argnums=(1, 2)).lower(features, params, state, positives).compile().as_text()
        shapes = re.findall(r"= bf16\[([\d,]+)\]\S* convert\(", text)
        assert all(math.prod(map(int, shape.split(","))) < dim * classes for shape in shapes)
    assert fused_memory.output_size_in_bytes - fused_memory.alias_size_in_bytes < 0.01 * kernel_bytes
    assert separate_memory.temp_size_in_bytes > kernel_bytes


def _class_spec(leaf) -> P:
    """Kernels (and kernel-shaped state) and biases over the classes ("model"); scalars replicated."""
    return P(None, "model") if leaf.ndim == 2 else P("model") if leaf.ndim == 1 else P()


def _sharded_over_classes(mesh, features, params, state, labels) -> tuple:
    """The step's arguments placed on ``mesh``: features and labels over the examples ("data"), the head and its
    state over the classes."""
    put = lambda tree, spec: jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, spec(a))), tree)  # noqa: E731
    by_examples = lambda a: P("data")  # noqa: E731
    return put(features, by_examples), put(params, _class_spec), put(state, _class_spec), put(labels, by_examples)


@devices.eight_devices
@pytest.mark.parametrize("chunk_size", [None, 8, 24])
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_sharded_over_classes_equals_one_device(axis_type, chunk_size):
    """Kernel, bias and optimizer state sharded over the classes ("model"), features and labels over the examples,
    with the chunk chosen or given (24 of 40 classes: a partial last chunk): one device's step, every result keeps
    its argument's sharding, and nothing of the kernel's size is gathered."""
    mesh = devices.mesh(axis_type)
    optimizer = optax.adam(1e-2)
    features, params, labels = _problem(seed=4)
    state = optimizer.init(params)
    expected = jaxbce.linear_binary_cross_entropy_update(features, params, state, labels, optimizer=optimizer)

    args = _sharded_over_classes(mesh, features, params, state, labels)
    step = functools.partial(jaxbce.linear_binary_cross_entropy_update, optimizer=optimizer, chunk_size=chunk_size)
    with set_mesh(mesh):
        got = jax.jit(step)(*args)
        hlo = jax.jit(step).lower(*args).compile().as_text()
    _assert_steps_equal(got, expected)
    gathered = [line for line in hlo.splitlines() if "all-gather" in line or "all-to-all" in line]
    assert not [line for line in gathered if "f32[40]" in line or f"f32[{D},40]" in line], gathered
    for result, argument in zip(jax.tree.leaves(got[2:]), jax.tree.leaves(args[1:3]), strict=True):
        assert result.sharding.is_equivalent_to(argument.sharding, result.ndim)


@devices.eight_devices
@pytest.mark.parametrize(
    ("axis_type", "chunk_size", "multiple"),
    [(AxisType.Explicit, 3, 2), (AxisType.Auto, 12, 8)],
    ids=["explicit: 2 class shards", "auto: up to gcd(40, 8) shards"],
)
def test_a_chunk_that_cannot_stay_local_is_a_value_error(axis_type, chunk_size, multiple):
    """Under Explicit axes the class shards are read from the kernel's type ("model": 2); under Auto axes inside
    jit they are not known when the loop is traced, and the chunk must suit every sharding the devices allow. A
    chunk that does not is refused, never changed: the error names the multiple that works."""
    mesh = devices.mesh(axis_type)
    optimizer = optax.adam(1e-2)
    features, params, labels = _problem(seed=4)
    args = _sharded_over_classes(mesh, features, params, optimizer.init(params), labels)
    step = functools.partial(jaxbce.linear_binary_cross_entropy_update, optimizer=optimizer, chunk_size=chunk_size)
    with (
        set_mesh(mesh),
        pytest.raises(ValueError, match=f"chunk_size={chunk_size} cannot keep .* multiple of {multiple}"),
    ):
        jax.jit(step)(*args)


@devices.eight_devices
def test_stochastic_rounding_sharded_over_classes():
    """bfloat16 head and Adam state sharded over the classes on Explicit axes, with ``key``: every result keeps its
    argument's sharding and dtype, and each parameter and moment is a bfloat16 neighbour of one device's float32
    step (the random numbers depend on the chunk layout, which differs between 8 devices and 1)."""
    mesh = devices.mesh(AxisType.Explicit)
    optimizer = optax.adam(1e-3)
    features, params, labels = _problem(seed=9)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    expected, state = _float32_step_of_bfloat16_head(optimizer, features, params, labels)

    args = _sharded_over_classes(mesh, features, params, state, labels)
    step = jax.jit(functools.partial(jaxbce.linear_binary_cross_entropy_update, optimizer=optimizer, chunk_size=4))
    with set_mesh(mesh):
        got = step(*args, key=jax.random.key(3))[2:]
    for g, e, a in zip(jax.tree.leaves(got), jax.tree.leaves(expected), jax.tree.leaves(args[1:3]), strict=True):
        assert g.dtype == a.dtype
        assert g.sharding.spec == a.sharding.spec
        if g.ndim:
            e = np.asarray(e)
            neighbours = _bfloat16_neighbours(e, 2e-6 * np.abs(e) + 1e-30)
            assert (np.float32(g)[None] == neighbours).any(axis=0).all()


@devices.eight_devices
def test_inside_shard_map_with_local_classes():
    """Inside shard_map with the classes split over "model" (reduction="sum"): each shard updates its own columns,
    and the psum of the shards' losses and features gradients is one device's."""
    mesh = devices.mesh(AxisType.Explicit)
    optimizer = optax.adam(1e-2)
    features, params, labels = _problem(seed=5)
    state = optimizer.init(params)
    step = functools.partial(jaxbce.linear_binary_cross_entropy_update, optimizer=optimizer, reduction="sum")
    expected = step(features, params, state, labels)

    def local(features, params, state, labels):
        loss, features_grad, params, state = step(features, params, state, labels)
        return jax.lax.psum(loss, "model"), jax.lax.psum(features_grad, "model"), params, state

    in_specs = (P(), jax.tree.map(_class_spec, params), jax.tree.map(_class_spec, state), P(None, "model"))
    out_specs = (P(), P(), in_specs[1], in_specs[2])
    sharded = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    args = jax.tree.map(
        lambda a, s: jax.device_put(a, NamedSharding(mesh, s)),
        (features, params, state, labels),
        in_specs,
        is_leaf=lambda x: isinstance(x, P),
    )
    with set_mesh(mesh):
        got = jax.jit(sharded)(*args)
    # The features gradient is a psum of the shards' partial sums: float32 summation order (values up to ~6).
    _assert_steps_equal(got, expected, atol=1e-6)


def test_every_target_equals_the_materialised_computations():
    """The fused loss (dense labels, sparse positives, a partial last chunk, ignored labels, masks), its gradients,
    the fused update and the SigLIP loss equal the materialised computations (float32 summation-order rounding),
    in the session's layout: one group of classes on one device, gcd(C, 8) groups on eight."""
    features, params, labels = _problem(seed=6)
    rng = np.random.default_rng(7)
    positives = jnp.asarray(rng.integers(-1, C, size=(N, 5)), jnp.int32)
    dense_positives = (
        jnp.zeros((N, C)).at[jnp.arange(N)[:, None], jnp.where(positives >= 0, positives, C)].set(1.0, mode="drop")
    )
    partial = jnp.where(jnp.asarray(rng.uniform(size=(N, C)) < 0.2), -1.0, labels)
    keep = jnp.asarray(np.arange(N) % 3 != 0)
    for chunk_size, targets, options in (
        (8, {"labels": labels}, {}),
        (24, {"positives": positives}, {"where": keep}),  # 40 classes: a partial last chunk
        (16, {"labels": partial}, {"ignore_label": -1.0}),
    ):

        def fused(f, p, targets=targets, options=options, chunk_size=chunk_size):
            kernel, bias = p["kernel"], p["bias"]
            return jaxbce.linear_binary_cross_entropy(f, kernel, **targets, bias=bias, chunk_size=chunk_size, **options)

        def materialised(f, p, targets=targets, options=options):
            dense = targets.get("labels", dense_positives)
            where = options.get("where")
            mask = (dense != -1.0) if "ignore_label" in options else None
            if where is not None:
                mask = jnp.broadcast_to(where[:, None], dense.shape)
            return jaxbce.binary_cross_entropy_with_logits(
                f @ p["kernel"] + p["bias"], jnp.where(dense == -1.0, 0.0, dense), where=mask
            )

        got = jax.value_and_grad(fused, argnums=(0, 1))(features, params)
        expected = jax.value_and_grad(materialised, argnums=(0, 1))(features, params)
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-7)
        optimizer = optax.adam(1e-2)
        state = optimizer.init(params)
        step = jaxbce.linear_binary_cross_entropy_update(
            features, params, state, **targets, optimizer=optimizer, chunk_size=chunk_size, **options
        )
        kernel_and_bias = {"kernel": params["kernel"], "bias": params["bias"]}
        _assert_steps_equal(
            step, _materialised_step(optimizer, features, kernel_and_bias, state, targets.get("labels"),
                                     chunk_size=chunk_size, **{k: v for k, v in targets.items() if k != "labels"},
                                     **options),
        )  # fmt: skip
    images, texts = features, jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    logits = images @ texts.T * 2.0 - 1.0
    siglip = -jnp.sum(jax.nn.log_sigmoid((2 * jnp.eye(N) - 1) * logits)) / N  # big_vision's formula
    np.testing.assert_allclose(
        jaxbce.sigmoid_contrastive_loss(images, texts, 2.0, -1.0, chunk_size=5), siglip, rtol=2e-6
    )
