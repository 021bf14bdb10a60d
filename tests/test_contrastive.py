"""sigmoid_contrastive_loss (SigLIP): equal to the dense big_vision form written here (value and the gradients
in both embeddings, logit_scale and logit_bias), on one device in chunks and as a ppermute ring over 8 host
devices and over 2 processes; never the B x B logits (compiled memory) and no all-gather (optimised HLO)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from processes import run_on_two_processes

import devices
import doc_blocks
import jaxbce
from jax_compat import enable_x64, set_mesh
from reference import dense_siglip

ARGNUMS = (0, 1, 2, 3)


def _embeddings(batch, dim=16, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    images, texts = rng.normal(size=(2, batch, dim))
    texts = texts + 0.8 * images  # matching pairs are more alike than the rest
    norm = lambda a: (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(dtype)  # noqa: E731
    return norm(images), norm(texts)


def _close(got, expected, rtol, atol=0.0):
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(e, np.float64), rtol=rtol, atol=atol)


@pytest.mark.parametrize("chunk_size", [None, 16, 7, 64])
@pytest.mark.parametrize("masked", [False, True])
def test_one_device_equals_the_dense_form(chunk_size, masked):
    images, texts = _embeddings(40)
    where = np.random.default_rng(1).uniform(size=40) > 0.3 if masked else None
    scalars = (np.float32(10.0), np.float32(-10.0))
    loss = lambda *a: jaxbce.sigmoid_contrastive_loss(*a, where=where, chunk_size=chunk_size)  # noqa: E731
    got = jax.value_and_grad(loss, argnums=ARGNUMS)(images, texts, *scalars)
    expected = jax.value_and_grad(lambda *a: dense_siglip(*a, where=where), argnums=ARGNUMS)(images, texts, *scalars)
    _close(got, expected, rtol=2e-5, atol=1e-6)


def test_float64_matches_the_dense_form_to_float64_rounding():
    images, texts = _embeddings(24, dtype=np.float64)
    with enable_x64(True):
        loss = lambda *a: jaxbce.sigmoid_contrastive_loss(*a, chunk_size=5)  # noqa: E731
        got = jax.value_and_grad(loss, argnums=ARGNUMS)(images, texts, 3.0, -2.0)
        expected = jax.value_and_grad(dense_siglip, argnums=ARGNUMS)(images, texts, 3.0, -2.0)
        assert got[0].dtype == jnp.float64
    _close(got, expected, rtol=1e-12, atol=1e-14)


def test_masked_pairs_may_hold_nan_and_nothing_kept_is_zero():
    images, texts = _embeddings(12)
    where = np.arange(12) < 9
    dirty = lambda a: np.where(where[:, None], a, np.nan).astype(np.float32)  # noqa: E731
    loss = lambda *a, w=where: jaxbce.sigmoid_contrastive_loss(*a, where=w, chunk_size=4)  # noqa: E731
    got = jax.value_and_grad(loss, argnums=ARGNUMS)(dirty(images), dirty(texts), 5.0, -3.0)
    expected = jax.value_and_grad(loss, argnums=ARGNUMS)(images, texts, 5.0, -3.0)
    _close(got, expected, rtol=0)
    assert np.all(np.asarray(got[1][0])[~where] == 0)
    none = jax.value_and_grad(loss, argnums=ARGNUMS)(images, texts, 5.0, -3.0, w=np.zeros(12, bool))
    assert float(none[0]) == 0.0
    assert all(np.all(np.asarray(g) == 0) for g in none[1])


def test_bfloat16_embeddings_compute_in_float32():
    images, texts = _embeddings(32)
    low = jaxbce.sigmoid_contrastive_loss(images.astype(jnp.bfloat16), texts.astype(jnp.bfloat16), 10.0, -10.0)
    assert low.dtype == jnp.bfloat16
    rounded = [np.asarray(a.astype(jnp.bfloat16), np.float32) for a in (images, texts)]
    np.testing.assert_allclose(float(low), float(dense_siglip(*rounded, 10.0, -10.0)), rtol=8e-3)


def _ring_loss(mesh, chunk_size=None, check_vma=True):
    def local(images, texts, scale, bias, where):
        return jaxbce.sigmoid_contrastive_loss(
            images, texts, scale, bias, where=where, axis_name="data", chunk_size=chunk_size
        )

    rows = P("data")
    return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, P(), P(), rows), out_specs=P(), check_vma=check_vma)


@devices.eight_devices
@pytest.mark.parametrize(("chunk_size", "check_vma"), [(None, True), (3, True), (None, False)])
def test_ring_over_8_devices_equals_one_device(chunk_size, check_vma):
    """Both shard_map modes: without check_vma, shard_map divides the replicated loss's cotangent by the
    number of devices and the transposed psum sums it back (the embedding gradients were 1/8 of the truth)."""
    images, texts = _embeddings(64, seed=2)
    where = np.random.default_rng(3).uniform(size=64) > 0.2
    scalars = (np.float32(10.0), np.float32(-10.0))
    single = jax.value_and_grad(lambda *a: jaxbce.sigmoid_contrastive_loss(*a, where=where), argnums=ARGNUMS)(
        images, texts, *scalars
    )
    mesh = devices.mesh(shape=(8,), names=("data",))
    put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))  # noqa: E731
    ring = jax.jit(jax.value_and_grad(_ring_loss(mesh, chunk_size, check_vma), argnums=ARGNUMS))
    got = ring(put(images), put(texts), *scalars, put(where))
    _close(got, single, rtol=2e-5, atol=1e-6)
    assert got[1][0].sharding.spec == P("data", None)  # the image gradient stays where its rows are


@devices.eight_devices
@pytest.mark.parametrize(
    ("where_spec", "axis_type"),
    [(P("data"), AxisType.Explicit), (P(), AxisType.Explicit), (P(), AxisType.Auto)],
)
def test_one_device_form_on_sharded_rows(where_spec, axis_type):
    """Without axis_name, under jax.make_mesh's Explicit axes (and Auto ones) with the rows sharded: one device's
    numbers, and no B x B array gathered."""
    images, texts = _embeddings(64, seed=5)
    where = np.random.default_rng(6).uniform(size=64) > 0.2
    loss = lambda x, z, s, b, w: jaxbce.sigmoid_contrastive_loss(x, z, s, b, where=w, chunk_size=16)  # noqa: E731
    scalars = (np.float32(10.0), np.float32(-10.0))
    expected = jax.value_and_grad(loss, argnums=ARGNUMS)(images, texts, *scalars, where)
    mesh = devices.mesh(axis_type, shape=(8,), names=("data",))
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
    arguments = (put(images, P("data")), put(texts, P("data")), *scalars, put(where, where_spec))
    step = jax.jit(jax.value_and_grad(loss, argnums=ARGNUMS))
    with set_mesh(mesh):
        got = step(*arguments)
        hlo = step.lower(*arguments).compile().as_text()
    _close(got, expected, rtol=2e-5, atol=1e-6)
    for result in re.findall(r"= (\S+) all-gather\(", hlo):
        assert "64,64" not in result, result


@devices.eight_devices
def test_ring_hlo_permutes_and_never_gathers():
    images, texts = _embeddings(64, seed=4)
    mesh = devices.mesh(shape=(8,), names=("data",))
    put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))  # noqa: E731
    arguments = (put(images), put(texts), np.float32(10.0), np.float32(-10.0), put(np.ones(64, bool)))
    loss = _ring_loss(mesh)
    for function in (loss, jax.grad(loss, argnums=ARGNUMS)):
        hlo = jax.jit(function).lower(*arguments).compile().as_text()
        assert "collective-permute" in hlo
        assert "all-gather" not in hlo
        assert "all-to-all" not in hlo


def test_temporaries_are_far_below_the_dense_logits():
    """One device, B = 4096, D = 64, blocks of 256 x 256: the compiled value_and_grad's temporaries are a few
    B x D arrays (the gradients, the scaled kernel) and a few blocks, far below the B x B float32 logits that
    the dense form holds (and their gradient, in its backward pass)."""
    batch, dim, chunk = 4096, 64, 256
    spec = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    loss = lambda *a: jaxbce.sigmoid_contrastive_loss(*a, chunk_size=chunk)  # noqa: E731
    compiled = jax.jit(jax.value_and_grad(loss, argnums=ARGNUMS)).lower(spec, spec, scalar, scalar).compile()
    temporaries = compiled.memory_analysis().temp_size_in_bytes
    dense = jax.jit(jax.value_and_grad(dense_siglip, argnums=ARGNUMS)).lower(spec, spec, scalar, scalar).compile()
    logits_bytes = batch * batch * 4
    assert temporaries <= 6 * batch * dim * 4 + 4 * chunk * chunk * 4, temporaries
    assert temporaries < logits_bytes / 8, (temporaries, logits_bytes)
    assert dense.memory_analysis().temp_size_in_bytes >= logits_bytes


@devices.eight_devices
def test_two_processes_equal_one_device():
    """Two processes on 127.0.0.1 (gloo collectives, 2 CPU devices each): the ring over the 4 devices gives the
    whole batch's loss and gradients (checked by the script against the dense form in float64)."""
    for returncode, output in run_on_two_processes("contrastive_multihost.py"):
        assert returncode == 0, output
        assert "matches the single-device dense loss" in output, output


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"texts": np.zeros((5, 3), np.float32)}, ValueError, r"must both have shape \(B, D\)"),
        ({"images": np.zeros(4, np.float32)}, ValueError, r"must both have shape \(B, D\)"),
        ({"scale": np.ones(2, np.float32)}, ValueError, "logit_scale must be a scalar"),
        ({"bias": np.ones((1, 1), np.float32)}, ValueError, "logit_bias must be a scalar"),
        ({"images": np.zeros((4, 3), np.int32)}, TypeError, "image_embeddings"),
        ({"where": np.ones(4, np.float32)}, TypeError, "where must be a bool array"),
        ({"where": np.ones(5, bool)}, ValueError, "where"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be"),
    ],
)
def test_bad_arguments(arguments, error, message):
    values = {"images": np.zeros((4, 3), np.float32), "texts": np.zeros((4, 3), np.float32), "scale": 1.0,
              "bias": 0.0, "where": None, "chunk_size": None} | arguments  # fmt: skip
    with pytest.raises(error, match=message):
        jaxbce.sigmoid_contrastive_loss(
            values["images"], values["texts"], values["scale"], values["bias"], where=values["where"],
            chunk_size=values["chunk_size"],
        )  # fmt: skip


def test_forward_mode_is_a_clear_error():
    images, texts = _embeddings(4)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda s: jaxbce.sigmoid_contrastive_loss(images, texts, s, 0.0), (1.0,), (1.0,))


def test_the_train_step_in_the_scaling_docs_runs():
    """docs/scaling.md's shard_map train step, executed as written (8 host devices)."""
    namespace = doc_blocks.run("docs/scaling.md", "## SigLIP across devices")
    params, where = namespace["params"], np.asarray(namespace["where"])
    arrays = [np.asarray(namespace[name]) for name in ("images", "texts")]
    x, z = namespace["towers"](params, *arrays)  # after one step: the loss again, against the dense form
    expected = dense_siglip(x, z, jnp.exp(params["log_scale"]), params["bias"], where)
    got = jax.jit(namespace["siglip_loss"])(params, namespace["images"], namespace["texts"], namespace["where"])
    np.testing.assert_allclose(float(got), float(expected), rtol=2e-6)
    assert float(got) < float(namespace["loss"])  # the step lowered the loss


def test_no_bias_is_logit_bias_none():
    """logit_bias=None is no bias: the loss and the other gradients of a zero bias."""
    images, texts = _embeddings(12, seed=9)
    without = jax.value_and_grad(lambda x, s: jaxbce.sigmoid_contrastive_loss(x, texts, s, None), argnums=(0, 1))
    zero = jax.value_and_grad(lambda x, s: jaxbce.sigmoid_contrastive_loss(x, texts, s, 0.0), argnums=(0, 1))
    _close(without(images, np.float32(5.0)), zero(images, np.float32(5.0)), rtol=0)
    np.testing.assert_allclose(without(images, np.float32(5.0))[0], dense_siglip(images, texts, 5.0, 0.0), rtol=2e-6)
