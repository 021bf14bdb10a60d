"""Sharded meshes and multi-process runs: the same numbers as on one device, with no hidden gathers.

The session has 8 CPU devices (tests/conftest.py); on a GPU or TPU host the same tests use its devices.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from processes import run_on_two_processes

import jaxbce

BATCH, CLASSES = 16, 8
# Large enough for the fused CPU sum of binary_cross_entropy_with_logits (_pipeline.FUSIBLE_MIN_ELEMENTS).
FUSED_SHAPE = (64, 128)


def _batch(seed=0, shape=(BATCH, CLASSES)):
    rng = np.random.default_rng(seed)
    classes = shape[1]
    return {
        "x": rng.normal(scale=3.0, size=shape).astype(np.float32),
        "y": (rng.uniform(size=shape) > 0.5).astype(np.float32),
        "where": rng.uniform(size=shape) > 0.2,
        "pos_weight": np.linspace(0.5, 4.0, classes).astype(np.float32),
        "weight": rng.uniform(0.5, 2.0, size=(classes,)).astype(np.float32),
    }


def _loss(x, y, where, pos_weight, weight, reduction="mean"):
    return jaxbce.binary_cross_entropy_with_logits(
        x, y, where=where, pos_weight=pos_weight, weight=weight, reduction=reduction
    )


def _args(batch):
    return tuple(batch[k] for k in ("x", "y", "where", "pos_weight", "weight"))


def _mesh():
    # 8 accelerators where the host has them; otherwise the 8 CPU devices that tests/conftest.py creates
    # (a single-GPU host runs these on its CPU devices, the rest of the suite on the GPU).
    devices = jax.devices() if jax.device_count() >= 8 else jax.devices("cpu")
    if len(devices) < 8:
        pytest.fail("the sharding tests need 8 devices (tests/conftest.py sets 8 CPU devices)")
    return jax.make_mesh((4, 2), ("data", "model"), devices=devices[:8])


def _shard(batch, mesh):
    """logits, labels and mask on both axes; the per-class pos_weight and weight on the class axis."""
    specs = {"x": P("data", "model"), "y": P("data", "model"), "where": P("data", "model"),
             "pos_weight": P("model"), "weight": P("model")}  # fmt: skip
    return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in batch.items()}


class MeshTest(parameterized.TestCase):
    @parameterized.product(reduction=("mean", "weighted_mean", "sum"), shape=((BATCH, CLASSES), FUSED_SHAPE))
    def test_sharded_value_and_grad_equals_single_device(self, reduction, shape):
        batch = _batch(shape=shape)
        mesh = _mesh()
        sharded = _shard(batch, mesh)
        step = jax.jit(jax.value_and_grad(_loss, argnums=(0, 1, 3, 4)), static_argnames="reduction")
        value, grads = step(*_args(sharded), reduction=reduction)
        single = jax.device_put(batch, jax.devices()[0])
        expected_value, expected_grads = step(*_args(single), reduction=reduction)
        np.testing.assert_allclose(value, expected_value, rtol=1e-6)
        for grad, expected, name in zip(grads, expected_grads, ("x", "y", "pos_weight", "weight"), strict=True):
            # summation order differs across shards: per-class sums of +-0.07 terms agree to ~1e-8
            np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
            self.assertTrue(grad.sharding.is_equivalent_to(sharded[name].sharding, grad.ndim), name)

    @parameterized.parameters((BATCH, CLASSES), FUSED_SHAPE)
    def test_compiled_program_has_no_all_gather(self, *shape):
        mesh = _mesh()
        sharded = _shard(_batch(shape=shape), mesh)
        step = jax.jit(jax.value_and_grad(_loss, argnums=(0, 3)))
        hlo = step.lower(*_args(sharded)).compile().as_text()
        collectives = sorted(
            set(re.findall(r"\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)", hlo))
        )
        if mesh.devices.flat[0].platform == "cpu":  # the fused CPU sum, with its exact fallback, when large
            self.assertEqual(" conditional(" in hlo, shape == FUSED_SHAPE)
        self.assertNotIn("all-gather", collectives)
        self.assertNotIn("all-to-all", collectives)
        self.assertEqual(collectives, ["all-reduce"])
        # Every all-reduce carries scalars (loss sums, kept counts) or a shard of the per-class pos_weight
        # gradient, never a batch-sized array.
        for operands in re.findall(r"= (\(?[^=]*?\)?) all-reduce\(", hlo):
            for dims in re.findall(r"\w+\[([\d,]*)\]", operands):
                size = int(np.prod([int(d) for d in dims.split(",") if d], dtype=int))
                self.assertLessEqual(size, shape[1], operands)

    def test_per_example_losses(self):
        batch = _batch()
        sharded = _shard(batch, _mesh())
        per_example = jax.jit(lambda x, y, where, pos_weight: jaxbce.binary_cross_entropy_with_logits(
            x, y, where=where, pos_weight=pos_weight, axis=-1))  # fmt: skip
        got = per_example(sharded["x"], sharded["y"], sharded["where"], sharded["pos_weight"])
        self.assertEqual(got.shape, (BATCH,))
        expected = [
            jaxbce.binary_cross_entropy_with_logits(
                batch["x"][i], batch["y"][i], where=batch["where"][i], pos_weight=batch["pos_weight"]
            )
            for i in range(BATCH)
        ]
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    def test_global_mean_inside_shard_map(self):
        """Per-shard sums and kept counts, psum'd over the mesh, divided once: the global mean."""
        mesh = _mesh()
        batch = _batch()
        sharded = _shard(batch, mesh)
        specs = (P("data", "model"), P("data", "model"), P("data", "model"), P("model"))

        @jax.jit
        @jax.shard_map(mesh=mesh, in_specs=specs, out_specs=P())
        def global_mean(x, y, where, pos_weight):
            local_sum = jaxbce.binary_cross_entropy_with_logits(
                x, y, where=where, pos_weight=pos_weight, reduction="sum"
            )
            local_count = jnp.sum(where, dtype=jnp.float32)
            return jax.lax.psum(local_sum, ("data", "model")) / jax.lax.psum(local_count, ("data", "model"))

        args = (sharded["x"], sharded["y"], sharded["where"], sharded["pos_weight"])
        with jax.set_mesh(mesh):  # explicit mesh axes: jit(shard_map) runs inside the mesh context
            value = global_mean(*args)
            grad = jax.grad(lambda x: global_mean(x, *args[1:]))(args[0])
        expected = jaxbce.binary_cross_entropy_with_logits(
            batch["x"], batch["y"], where=batch["where"], pos_weight=batch["pos_weight"]
        )
        np.testing.assert_allclose(value, expected, rtol=1e-6)
        expected_grad = jax.grad(
            lambda x: jaxbce.binary_cross_entropy_with_logits(
                x, batch["y"], where=batch["where"], pos_weight=batch["pos_weight"]
            )
        )(batch["x"])
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-9)

    def test_vmap_over_an_ensemble_composes_with_sharding(self):
        mesh = _mesh()
        batch = _batch()
        members = np.stack([batch["x"] * scale for scale in (0.5, 1.0, 2.0)])  # (ensemble, batch, classes)
        ensemble = jax.device_put(members, NamedSharding(mesh, P(None, "data", "model")))
        sharded = _shard(batch, mesh)

        @jax.jit
        def per_member(logits):
            return jax.vmap(lambda x: _loss(x, sharded["y"], sharded["where"], sharded["pos_weight"], None))(logits)

        expected = [_loss(m, batch["y"], batch["where"], batch["pos_weight"], None) for m in members]
        np.testing.assert_allclose(per_member(ensemble), expected, rtol=1e-6)
        grads = jax.jit(jax.grad(lambda e: per_member(e).sum()))(ensemble)
        self.assertTrue(grads.sharding.is_equivalent_to(ensemble.sharding, 3))


def test_two_processes_agree_with_one():
    """Two processes on 127.0.0.1 (gloo CPU collectives, 2 devices each) build a global batch from local data;
    each checks the global mean loss and its gradient shards against a float64 single-machine reference."""
    for returncode, output in run_on_two_processes("multihost.py", timeout=120):
        assert returncode == 0, output
        assert "gradient shards match: OK" in output, output
