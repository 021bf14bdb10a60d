"""jaxbce across processes: a global, data-parallel batch built from process-local data.

Each process owns some rows of a global batch, the arrays are assembled into one sharded global array, and
the jitted value_and_grad of jaxbce's mean loss is the same number on every process, equal to the loss of the
whole batch on one machine (checked here against a float64 NumPy reference).

On real hosts, start one copy per host (same coordinator, its own process id):

    python examples/multihost.py --coordinator HOST0:1234 --num-processes 2 --process-id 0   # on host 0
    python examples/multihost.py --coordinator HOST0:1234 --num-processes 2 --process-id 1   # on host 1

On one machine the tests start two processes on 127.0.0.1, each with two CPU devices and gloo collectives:

    python examples/multihost.py --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0 --cpu-devices 2
"""

import jax
import numpy as np

from common import bce_float64, start_distributed

ROWS, CLASSES = 16, 6


def global_batch():
    """The whole batch, known here to every process only so that it can check the result."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(ROWS, CLASSES)).astype(np.float32)
    labels = (rng.uniform(size=(ROWS, CLASSES)) > 0.6).astype(np.float32)
    keep = rng.uniform(size=(ROWS, CLASSES)) > 0.2  # e.g. labels missing for some classes
    pos_weight = np.linspace(1.0, 3.0, CLASSES).astype(np.float32)
    return logits, labels, keep, pos_weight


def numpy_reference(logits, labels, keep, pos_weight):
    """float64 mean over kept elements of pw*y*softplus(-x) + (1-y)*softplus(x), and its gradient."""
    loss, grad = bce_float64(logits, labels, pos_weight)
    count = keep.sum()
    return np.where(keep, loss, 0).sum() / count, np.where(keep, grad, 0) / count


def main() -> None:
    start_distributed(__doc__)

    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxbce  # after initialize: nothing may touch the backend before it

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    rows = NamedSharding(mesh, P("data"))
    logits, labels, keep, pos_weight = global_batch()
    # This process's rows: what its data loader would have produced.
    per_process = ROWS // jax.process_count()
    mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)

    def assemble(array):
        return jax.make_array_from_process_local_data(rows, array[mine], array.shape)

    x, y, m = assemble(logits), assemble(labels), assemble(keep)

    @jax.jit
    def step(x, y, m):
        return jax.value_and_grad(jaxbce.binary_cross_entropy_with_logits)(x, y, pos_weight=pos_weight, where=m)

    loss, grad = step(x, y, m)
    expected_loss, expected_grad = numpy_reference(logits, labels, keep, pos_weight)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-6)
    assert grad.sharding.is_equivalent_to(x.sharding, x.ndim), grad.sharding
    for shard in grad.addressable_shards:
        np.testing.assert_allclose(np.asarray(shard.data), expected_grad[shard.index], rtol=1e-5, atol=1e-9)
    print(
        f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
        f"{jax.device_count()} devices, global mean loss {float(loss):.6f} (reference {expected_loss:.6f}), "
        "gradient shards match: OK"
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
