"""Sharded meshes and multi-process runs: the same numbers as on one device, with no hidden gathers.

The session has 8 CPU devices (tests/conftest.py); on a GPU or TPU host the same tests use its devices.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from processes import run_on_two_processes

import devices
import doc_blocks
import jaxbce
from jax_compat import set_mesh
from jaxbce._arguments import Role
from loss_table import LOSSES

BATCH, CLASSES = 16, 8
# Large enough for the fused CPU sum of binary_cross_entropy_with_logits (_reductions.FUSIBLE_MIN_ELEMENTS).
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


def _shard(batch, mesh):
    """logits, labels and mask on both axes; the per-class pos_weight and weight on the class axis."""
    specs = {"x": P("data", "model"), "y": P("data", "model"), "where": P("data", "model"),
             "pos_weight": P("model"), "weight": P("model")}  # fmt: skip
    return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in batch.items()}


def _collective_sizes(hlo: str, kind: str) -> list[int]:
    """The number of elements of each result of the collectives ``kind`` in an HLO text."""
    sizes = []
    for result in re.findall(rf"= (\(?[^=]*?\)?) {kind}\(", hlo):
        for dims in re.findall(r"\w+\[([\d,]*)\]", result):
            sizes.append(int(np.prod([int(d) for d in dims.split(",") if d], dtype=int)))
    return sizes


class MeshTest(parameterized.TestCase):
    @parameterized.product(reduction=("mean", "weighted_mean", "sum"), shape=((BATCH, CLASSES), FUSED_SHAPE))
    def test_sharded_value_and_grad_equals_single_device(self, reduction, shape):
        batch = _batch(shape=shape)
        mesh = devices.mesh()
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
        mesh = devices.mesh()
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
        sizes = _collective_sizes(hlo, "all-reduce")
        self.assertTrue(sizes)
        self.assertLessEqual(max(sizes), shape[1], sizes)

    def test_per_example_losses(self):
        batch = _batch()
        sharded = _shard(batch, devices.mesh())
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
        mesh = devices.mesh()
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
        with set_mesh(mesh):  # explicit mesh axes: jit(shard_map) runs inside the mesh context
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
        mesh = devices.mesh()
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


# Every sharding mode, driven by the registry: each loss under Explicit axes (what jax.make_mesh gives), Auto axes
# and inside shard_map, with the arguments sharded as a data pipeline hands them over, against one device.
MODES = ("explicit", "auto", "shard_map")
# (labels and other full-shape arrays, (B, 1) weight and where, per-class pos_weight or alpha): the logits are
# always sharded over examples and classes.
LAYOUTS = {
    "labels_replicated": (P(), P("data"), P("model")),
    "labels_over_examples": (P("data"), P(), P()),
}
PER_CLASS = (Role.NON_NEGATIVE, Role.FRACTION)


def _registry_arguments(loss, seed=0):
    """Every array argument of a registered loss, by name: its own (per-class for pos_weight and alpha), a
    per-example (B, 1) weight and where."""
    rng = np.random.default_rng(seed)
    shape = (BATCH, CLASSES)
    arguments = {}
    for name, role in loss.arrays:
        if role is Role.LOGITS:
            arguments[name] = rng.normal(scale=3.0, size=shape).astype(np.float32)
        elif role in PER_CLASS:
            arguments[name] = rng.uniform(0.2, 0.9, size=(CLASSES,)).astype(np.float32)
        else:  # probabilities and soft labels
            arguments[name] = rng.uniform(0.01, 0.99, size=shape).astype(np.float32)
    if loss.takes_weight:
        arguments["weight"] = rng.uniform(0.5, 2.0, size=(BATCH, 1)).astype(np.float32)
    arguments["where"] = rng.uniform(size=(BATCH, 1)) > 0.25
    return arguments


def _specs(loss, arguments, layout):
    full, per_example, per_class = LAYOUTS[layout]
    first = loss.arrays[0][0]
    roles = dict(loss.arrays)
    specs = {}
    for name in arguments:
        if name == first:
            specs[name] = P("data", "model")
        elif name in ("weight", "where"):
            specs[name] = per_example
        else:
            specs[name] = per_class if roles[name] in PER_CLASS else full
    return specs


def _local_spec(shape):
    """shard_map's in_specs: each device gets its block of the logits and the matching rows or classes."""
    return {(BATCH, CLASSES): P("data", "model"), (BATCH, 1): P("data"), (CLASSES,): P("model")}[shape]


def _registry_loss(loss, names, reduction):
    def function(*values):
        given = dict(zip(names, values, strict=True))
        positional = [given.pop(name) for name in loss.positional]
        return loss.function(*positional, **given, reduction=reduction)

    return function


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_in_every_sharding_mode(name, mode, layout):
    """Values and gradients (first argument, per-class and per-example arrays) equal one device's; "none" keeps
    the first argument's sharding; nothing of the logits' size is all-gathered."""
    loss = LOSSES[name]
    arguments = _registry_arguments(loss)
    names = list(arguments)
    specs = _specs(loss, arguments, layout)
    differentiable = tuple(i for i, n in enumerate(names) if n == names[0] or arguments[n].shape != (BATCH, CLASSES))
    differentiable = tuple(i for i in differentiable if arguments[names[i]].dtype != np.bool_)
    reduction = "mean" if layout == "labels_replicated" else "none"
    function = _registry_loss(loss, names, reduction)
    total = lambda *values: jnp.sum(function(*values))  # noqa: E731
    if mode == "shard_map":
        # Each device's elements, reduced by "sum" and psum'd: the global sum.
        function = _registry_loss(loss, names, "sum")
        total = jax.shard_map(
            lambda *values: jax.lax.psum(function(*values), ("data", "model")),
            mesh=devices.mesh(AxisType.Auto),
            in_specs=tuple(_local_spec(arguments[n].shape) for n in names),
            out_specs=P(),
        )
        reference = jax.value_and_grad(lambda *v: _registry_loss(loss, names, "sum")(*v), argnums=differentiable)(
            *arguments.values()
        )
    else:
        reference = jax.value_and_grad(total, argnums=differentiable)(*arguments.values())
    mesh = devices.mesh(AxisType.Explicit if mode == "explicit" else AxisType.Auto)
    sharded = [jax.device_put(arguments[n], NamedSharding(mesh, specs[n])) for n in names]
    step = jax.jit(jax.value_and_grad(total, argnums=differentiable))
    with set_mesh(mesh):
        value, grads = step(*sharded)
        hlo = step.lower(*sharded).compile().as_text()
        if reduction == "none" and mode != "shard_map":
            per_element = jax.jit(function)(*sharded)
            assert per_element.sharding.spec == P("data", "model"), per_element.sharding
    np.testing.assert_allclose(value, reference[0], rtol=2e-6)
    for got, expected in zip(grads, reference[1], strict=True):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
    logits_size = BATCH * CLASSES
    assert all(size < logits_size for size in _collective_sizes(hlo, "all-gather")), hlo


def test_every_example_in_the_scaling_docs_runs():
    """docs/scaling.md's examples before the SigLIP section, executed in order as written (the SigLIP train step
    runs in tests/test_contrastive.py), then checked against one device."""
    assert len(doc_blocks.blocks("docs/scaling.md", end="## SigLIP across devices")) == 5
    n = doc_blocks.run("docs/scaling.md", end="## SigLIP across devices")
    logits, labels, mask, pos_weight = n["logits"], n["labels"], n["mask"], n["pos_weight"]
    expected, expected_grad = jax.value_and_grad(jaxbce.binary_cross_entropy_with_logits)(
        logits, labels, pos_weight=pos_weight, where=mask
    )
    np.testing.assert_allclose(n["loss"], expected, rtol=2e-6)
    np.testing.assert_allclose(n["grad"], expected_grad, rtol=2e-5, atol=1e-8)
    assert n["grad"].sharding.spec == n["per_element"].sharding.spec == P("data", "model")
    unmasked = jaxbce.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
    np.testing.assert_allclose(n["auto_loss"], unmasked, rtol=2e-6)
    every_class = np.broadcast_to(mask, logits.shape)
    masked = jaxbce.binary_cross_entropy_with_logits(logits, labels, where=every_class, pos_weight=pos_weight)
    np.testing.assert_allclose(n["mapped_loss"], masked, rtol=2e-6)
    fused = lambda f, k: jaxbce.linear_binary_cross_entropy(f, k, positives=n["positives"], bias=n["bias"])  # noqa: E731
    fused_loss, fused_grads = jax.value_and_grad(fused, argnums=(0, 1))(n["features"], n["kernel"])
    np.testing.assert_allclose(n["fused_loss"], fused_loss, rtol=2e-6)
    np.testing.assert_allclose(n["d_kernel"], fused_grads[1], rtol=2e-5, atol=1e-8)
    assert n["d_kernel"].sharding.spec == P(None, "model")
    local = lambda f, k: jaxbce.linear_binary_cross_entropy(f, k, positives=n["positives"])  # noqa: E731
    np.testing.assert_allclose(n["local_loss"], local(n["features"], n["kernel"]), rtol=2e-6)


@pytest.mark.parametrize("mode", MODES)
def test_weight_helpers_in_every_sharding_mode(mode):
    """Counts sharded over the classes (Explicit, Auto) or whole on every device (shard_map, where
    class_balanced_weights normalises over the classes it is given): one device's weights and derivatives."""
    rng = np.random.default_rng(3)
    positives = rng.integers(0, 50, size=(CLASSES,)).astype(np.float32)
    totals = np.full((CLASSES,), 100.0, np.float32)

    def helpers(positives, totals):
        return jaxbce.pos_weight_from_counts(positives, totals), jaxbce.class_balanced_weights(positives, 0.99)

    def total(positives, totals):
        pos_weight, balanced = helpers(positives, totals)
        return jnp.sum(pos_weight * balanced)

    expected = (helpers(positives, totals), jax.grad(total, argnums=(0, 1))(positives, totals))
    mesh = devices.mesh(AxisType.Explicit if mode == "explicit" else AxisType.Auto)
    weights, objective, spec = helpers, total, P("model")
    if mode == "shard_map":
        weights = jax.shard_map(helpers, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()))
        objective = jax.shard_map(total, mesh=mesh, in_specs=(P(), P()), out_specs=P())
        spec = P()
    arguments = [jax.device_put(a, NamedSharding(mesh, spec)) for a in (positives, totals)]
    with set_mesh(mesh):
        got = (jax.jit(weights)(*arguments), jax.jit(jax.grad(objective, argnums=(0, 1)))(*arguments))
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-9)


def test_explicit_arrays_without_a_mesh_context():
    """Arrays sharded over Explicit axes before jit, with no jax.set_mesh around the call (as a multi-process
    pipeline hands them over): every loss gives one device's value and gradient."""
    mesh = devices.mesh(AxisType.Explicit)
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
    for name, loss in LOSSES.items():
        arguments = _registry_arguments(loss)
        names = list(arguments)
        specs = _specs(loss, arguments, "labels_over_examples")
        total = lambda *values, names=names, loss=loss: jnp.sum(_registry_loss(loss, names, "mean")(*values))  # noqa: E731
        expected = jax.value_and_grad(total)(*arguments.values())
        got = jax.jit(jax.value_and_grad(total))(*(put(arguments[n], specs[n]) for n in names))
        np.testing.assert_allclose(got[0], expected[0], rtol=2e-6, err_msg=name)
        np.testing.assert_allclose(got[1], expected[1], rtol=2e-5, atol=1e-7, err_msg=name)
    rng = np.random.default_rng(4)
    features, kernel = rng.normal(size=(BATCH, 4)).astype(np.float32), rng.normal(size=(4, 32)).astype(np.float32)
    labels = (rng.uniform(size=(BATCH, 32)) < 0.3).astype(np.float32)
    fused = lambda f, k, y: jaxbce.linear_binary_cross_entropy(f, k, y, chunk_size=8)  # noqa: E731
    got = jax.jit(jax.value_and_grad(fused))(put(features, P("data")), put(kernel, P(None, "model")), put(labels, P()))
    expected = jax.value_and_grad(fused)(features, kernel, labels)
    np.testing.assert_allclose(got[0], expected[0], rtol=2e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=2e-5, atol=1e-7)
    siglip = lambda x: jaxbce.sigmoid_contrastive_loss(x, x[::-1], 2.0, -1.0)  # noqa: E731
    np.testing.assert_allclose(jax.jit(siglip)(put(features, P("data"))), siglip(features), rtol=2e-6)
