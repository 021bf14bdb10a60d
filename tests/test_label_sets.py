"""Real label sets: the fused loss and update at any label count (primes, the counts of real data sets), with the
kernel in either layout, with labels as a ``jax.experimental.sparse.BCOO``, on one device or eight.

References: the materialised ``binary_cross_entropy_with_logits(features @ kernel + bias, dense_labels)``
(``tests/reference.py``, the contract's definition, to float32 summation-order rounding) and Optax's step on
its gradient; memory from the compiled executables' ``memory_analysis()``. ``make test`` runs this module in an
8-device session and in a one-device one (tests/devices.py).
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import sparse
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import devices
import jaxbce
from jax_compat import set_mesh
from reference import linear_bce

ROWS, DIM = 12, 7
# EURLex-4K's 3,993 labels (3 x 11^3), a prime, a power of two plus one (3 x 43,691: LF-AmazonTitles-131K), and a
# count with a factor 8 (every grouping of the 8-device session).
LABEL_COUNTS = (3993, 1009, 131073, 1000)


def _problem(classes, seed=0, rows=ROWS):
    rng = np.random.default_rng(seed)
    dense = rng.uniform(size=(rows, classes)) < 4 / classes
    positives = np.full((rows, 6), -1, np.int32)
    for row in range(rows):
        found = np.flatnonzero(dense[row])[:6]
        positives[row, : found.size] = found
        dense[row] = False
        dense[row, found] = True
    return {
        "features": jnp.asarray(rng.normal(size=(rows, DIM)), jnp.float32),
        "kernel": jnp.asarray(rng.normal(size=(DIM, classes)) / 2, jnp.float32),
        "bias": jnp.asarray(rng.normal(size=classes) - 2, jnp.float32),
        "pos_weight": jnp.asarray(rng.uniform(0.5, 3, size=classes), jnp.float32),
        "dense": jnp.asarray(dense, jnp.float32),
        "positives": jnp.asarray(positives),
    }


def _targets(p, form):
    """The same labels as dense ``labels``, padded ``positives`` or a ``BCOO``."""
    if form == "positives":
        return {"positives": p["positives"]}
    if form == "bcoo":
        return {"labels": sparse.BCOO.fromdense(p["dense"])}
    return {"labels": p["dense"]}


def _assert_close(got, expected):
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-7)


@pytest.mark.parametrize("classes", LABEL_COUNTS)
@pytest.mark.parametrize("kernel_layout", ["in_out", "out_in"])
@pytest.mark.parametrize("form", ["dense", "positives", "bcoo"])
@pytest.mark.parametrize("chunk_size", [None, 256])
def test_value_and_gradients_equal_the_materialised_loss(classes, kernel_layout, form, chunk_size):
    """Every label count, both layouts, the three forms of labels, a chosen chunk and one that leaves a partial
    last chunk: the value and the gradients in features, kernel, bias and pos_weight."""
    p = _problem(classes)
    transpose = kernel_layout == "out_in"

    def fused(f, k, b, pw):
        return jaxbce.linear_binary_cross_entropy(
            f, k, **_targets(p, form), bias=b, pos_weight=pw, chunk_size=chunk_size, kernel_layout=kernel_layout
        )

    def materialised(f, k, b, pw):
        return linear_bce(f, k.T if transpose else k, b, pw, None, labels=p["dense"], reduction="mean")

    kernel = p["kernel"].T if transpose else p["kernel"]
    args = (p["features"], kernel, p["bias"], p["pos_weight"])
    got = jax.value_and_grad(fused, argnums=(0, 1, 2, 3))(*args)
    expected = jax.value_and_grad(materialised, argnums=(0, 1, 2, 3))(*args)
    _assert_close(got, expected)


@pytest.mark.parametrize("kernel_layout", ["in_out", "out_in"])
@pytest.mark.parametrize("form", ["positives", "bcoo"])
def test_update_equals_optax_on_the_materialised_gradient(kernel_layout, form):
    """The fused Adam step at a prime label count with a partial last chunk (1,009 classes in chunks of 256), the
    kernel in either layout and updated in it."""
    classes = 1009
    p = _problem(classes, seed=1)
    transpose = kernel_layout == "out_in"
    params = {"kernel": p["kernel"].T if transpose else p["kernel"], "bias": p["bias"]}
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)
    got = jaxbce.linear_binary_cross_entropy_update(
        p["features"], params, state, **_targets(p, form), optimizer=optimizer, chunk_size=256,
        kernel_layout=kernel_layout,
    )  # fmt: skip

    def materialised(f, params):
        kernel = params["kernel"].T if transpose else params["kernel"]
        return linear_bce(f, kernel, params["bias"], None, None, labels=p["dense"], reduction="mean")

    value, (features_grad, grads) = jax.value_and_grad(materialised, argnums=(0, 1))(p["features"], params)
    updates, new_state = optimizer.update(grads, state, params)
    _assert_close(got, (value, features_grad, optax.apply_updates(params, updates), new_state))


def test_bcoo_labels_soft_duplicated_batched_and_out_of_range():
    """Soft values, a duplicated entry (summed, as BCOO defines), an out-of-range entry (dropped, as
    ``BCOO.todense`` drops it), masked rows holding NaN values, and labels ``(B, T, C)`` for features
    ``(B, T, D)``: the loss of ``labels.todense()``."""
    classes = 61
    p = _problem(classes, seed=2)
    rows = [0, 0, 1, 3, 3, 5, 11, 11]
    columns = [4, 4, 60, 0, 7, 33, 12, classes]  # (0, 4) twice; the last out of range
    values = [0.25, 0.5, 1.0, 0.3, 1.0, jnp.nan, 0.9, 1.0]  # row 5 is masked below
    labels = sparse.BCOO(
        (jnp.asarray(values, jnp.float32), jnp.asarray([rows, columns], jnp.int32).T), shape=(ROWS, classes)
    )
    where = jnp.arange(ROWS) != 5
    dense = jnp.where(where[:, None], labels.todense(), 0.0)
    assert dense[0, 4] == 0.75

    got = jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], labels, bias=p["bias"], where=where)
    expected = linear_bce(
        p["features"], p["kernel"], p["bias"], None, None, labels=dense, where=where, reduction="mean"
    )
    np.testing.assert_allclose(got, expected, rtol=2e-6)

    batched_features = p["features"].reshape(3, 4, DIM)
    batched = sparse.BCOO.fromdense(dense.reshape(3, 4, classes))
    got = jaxbce.linear_binary_cross_entropy(batched_features, p["kernel"], batched, bias=p["bias"], reduction="none")
    expected = linear_bce(batched_features, p["kernel"], p["bias"], None, None, labels=dense.reshape(3, 4, classes),
                          reduction="none")  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=2e-6)


def test_bcoo_value_checks_and_shape_errors():
    """Under ``jaxbce.checked`` a label whose duplicates sum above 1 is reported; a BCOO of another shape, or with
    batch dimensions, is a ValueError naming what to pass."""
    p = _problem(61, seed=3)
    twice = sparse.BCOO((jnp.array([0.75, 0.5]), jnp.array([[2, 9], [2, 9]])), shape=(ROWS, 61))
    checked = jaxbce.checked(jaxbce.linear_binary_cross_entropy)
    with pytest.raises(Exception, match=r"labels must sum to values in \[0, 1\]"):
        checked(p["features"], p["kernel"], twice)
    once = sparse.BCOO((jnp.array([0.75]), jnp.array([[2, 9]])), shape=(ROWS, 61))
    assert np.isfinite(checked(p["features"], p["kernel"], once))
    with pytest.raises(ValueError, match=r"labels as a BCOO must have shape features.shape\[:-1\] \+ \(C,\)"):
        jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], sparse.BCOO.fromdense(jnp.zeros((ROWS, 60))))
    batched = sparse.BCOO.fromdense(jnp.zeros((ROWS, 61)), n_batch=1)
    with pytest.raises(ValueError, match="no batch or dense dimensions"):
        jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], batched)
    with pytest.raises(ValueError, match="ignore_label applies to dense labels"):
        jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], once, ignore_label=-1)


def test_kernel_layout_errors():
    p = _problem(61)
    with pytest.raises(ValueError, match=r"kernel_layout must be 'in_out' .* or 'out_in'"):
        jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], p["dense"], kernel_layout="oi")
    with pytest.raises(ValueError, match=r"kernel must have shape \(C, features.shape\[-1\]\) for kernel_layout"):
        jaxbce.linear_binary_cross_entropy(p["features"], p["kernel"], p["dense"], kernel_layout="out_in")


def _temporaries(function, *args, donate=()) -> int:
    return jax.jit(function, donate_argnums=donate).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("classes", [65537, 2**16])  # a prime (2^16 + 1) and a power of two
def test_no_kernel_sized_temporaries_at_any_label_count_in_either_layout(classes):
    """The gradient of the fused loss and the donated Adam step (64 rows, 32 features, positives, chunks of 512
    classes): temporaries below an eighth of the kernel at a prime C as at a power of two, and ``out_in`` within
    eight kernel chunks of ``in_out`` (no transposed copy; with one group of classes, equal; bench/fused.py
    measures the ratio at real sizes). Before
    the partial last chunk, a prime C padded a copy of every class-sized array."""
    rows, dim = 64, 32
    kernel_bytes = dim * classes * 4
    optimizer = optax.adam(1e-3)
    features = jax.ShapeDtypeStruct((rows, dim), jnp.float32)
    positives = jax.ShapeDtypeStruct((rows, 8), jnp.int32)
    temporaries = {}
    for layout, shape in (("in_out", (dim, classes)), ("out_in", (classes, dim))):
        params = {
            "kernel": jax.ShapeDtypeStruct(shape, jnp.float32),
            "bias": jax.ShapeDtypeStruct((classes,), jnp.float32),
        }
        state = jax.eval_shape(optimizer.init, params)

        def loss(f, params, positives, layout=layout):
            return jaxbce.linear_binary_cross_entropy(
                f, params["kernel"], positives=positives, bias=params["bias"], chunk_size=512, kernel_layout=layout
            )

        def step(f, params, state, positives, layout=layout):
            return jaxbce.linear_binary_cross_entropy_update(
                f, params, state, positives=positives, optimizer=optimizer, chunk_size=512, kernel_layout=layout
            )

        temporaries[layout] = (
            _temporaries(jax.grad(loss, argnums=(0, 1)), features, params, positives),
            _temporaries(step, features, params, state, positives, donate=(1, 2)),
        )
    for gradient, update in temporaries.values():
        assert gradient < kernel_bytes / 8, temporaries
        assert update < kernel_bytes / 8, temporaries
    # Several groups of classes (the 8-device session's layout inside jit): XLA relays out each (groups, width, D)
    # chunk for its matmuls, a few chunk-sized arrays; one group: the same temporaries as (D, C).
    chunks = 8 if jax.device_count() > 1 and math.gcd(classes, jax.device_count()) > 1 else 0
    for in_out, out_in in zip(temporaries["in_out"], temporaries["out_in"], strict=True):
        assert out_in <= in_out + chunks * dim * 512 * 4, temporaries


def test_bcoo_labels_are_never_densified():
    """The gradient with a BCOO of labels holds nothing of size rows x C: temporaries below a quarter of the
    logits, as with positives."""
    rows, dim, classes = 64, 16, 2**14 + 27
    features = jax.ShapeDtypeStruct((rows, dim), jnp.float32)
    kernel = jax.ShapeDtypeStruct((dim, classes), jnp.float32)
    values, indices = jax.ShapeDtypeStruct((rows * 8,), jnp.float32), jax.ShapeDtypeStruct((rows * 8, 2), jnp.int32)

    def loss(f, k, values, indices):
        labels = sparse.BCOO((values, indices), shape=(rows, classes))
        return jaxbce.linear_binary_cross_entropy(f, k, labels, chunk_size=512)

    assert _temporaries(jax.grad(loss, argnums=(0, 1)), features, kernel, values, indices) < rows * classes * 4 / 4


def test_an_explicit_chunk_size_is_the_chunk_used():
    """The loop's trip count is ceil(C / chunk_size): a chunk_size is honoured, not rounded to a divisor of C
    (1,009 classes in chunks of 100: 11 steps, the last partial)."""
    p = _problem(1009)

    def steps(chunk_size):
        jaxpr = jax.make_jaxpr(
            lambda f, k: jaxbce.linear_binary_cross_entropy(f, k, positives=p["positives"], chunk_size=chunk_size)
        )(p["features"], p["kernel"])
        return [int(n) for n in re.findall(r"length=(\d+)", str(jaxpr)) + re.findall(r"upper=(\d+)", str(jaxpr))]

    assert 11 in steps(100)
    assert 1 in steps(5000)  # more than C: one chunk of every class


def test_the_layout_follows_the_session_devices():
    """One device: the kernel is read as it is, one contiguous block of classes per step (the layout of every
    single-GPU user). Eight devices: inside jit, where a kernel's sharding is not yet known, the classes are
    gcd(C, 8) groups so that any class sharding keeps each step local. This fails if the one-device session stops
    running one device."""
    assert jax.device_count() == devices.DEVICES
    p = _problem(1000)
    jaxpr = str(
        jax.make_jaxpr(lambda f, k: jaxbce.linear_binary_cross_entropy(f, k, p["dense"]))(p["features"], p["kernel"])
    )
    grouped = re.search(rf"reshape\[[^\]]*new_sizes=\({DIM}, 8, 125\)", jaxpr) is not None
    assert grouped == (devices.DEVICES == 8)


@devices.eight_devices
@pytest.mark.parametrize("chunk_size", [None, 24])
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_out_in_kernel_sharded_over_classes(axis_type, chunk_size):
    """A ``(C, D)`` kernel sharded over its classes ("model"), labels as a BCOO: one device's value and gradients,
    the kernel's gradient sharded as the kernel, and no all-gather."""
    mesh = devices.mesh(axis_type)
    p = _problem(1000, seed=5, rows=16)
    kernel = p["kernel"].T

    def loss(f, k, b, labels):
        return jaxbce.linear_binary_cross_entropy(f, k, labels, bias=b, chunk_size=chunk_size, kernel_layout="out_in")

    labels = sparse.BCOO.fromdense(p["dense"])
    gradient = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    expected = gradient(p["features"], kernel, p["bias"], labels)
    args = (
        jax.device_put(p["features"], NamedSharding(mesh, P("data"))),
        jax.device_put(kernel, NamedSharding(mesh, P("model"))),
        jax.device_put(p["bias"], NamedSharding(mesh, P("model"))),
        labels,
    )
    with set_mesh(mesh):
        got = gradient(*args)
        hlo = gradient.lower(*args).compile().as_text()
    _assert_close(got, expected)
    assert got[1][1].sharding.is_equivalent_to(args[1].sharding, 2)
    assert "all-gather" not in hlo
    assert "all-to-all" not in hlo
