"""The SigLIP loss as a ring across processes: each process holds its rows of both embeddings, the text rows
travel around the devices of all processes by ``ppermute`` inside ``shard_map``, and the loss and gradients
equal those of the whole batch on one machine (checked here against the dense float64 computation).

On one machine the tests start two processes on 127.0.0.1, each with two CPU devices and gloo collectives:

    python examples/contrastive_multihost.py --coordinator 127.0.0.1:1234 --num-processes 2 --process-id 0 \\
        --cpu-devices 2
"""

import jax
import numpy as np

from common import siglip_float64, start_distributed

BATCH, DIM = 32, 8


def global_batch():
    """Both towers' normalised embeddings for the whole batch, known here to every process only so that it
    can check the result."""
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(2, BATCH, DIM))
    texts = texts + images
    norm = lambda a: (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    return norm(images), norm(texts)


def main() -> None:
    start_distributed(__doc__)

    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxbce  # after initialize: nothing may touch the backend before it

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    rows = NamedSharding(mesh, P("data"))
    images, texts = global_batch()
    per_process = BATCH // jax.process_count()
    mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    x, z = (jax.make_array_from_process_local_data(rows, a[mine], a.shape) for a in (images, texts))
    scale, bias = np.float32(10.0), np.float32(-10.0)

    def local(x, z, scale, bias):
        return jaxbce.sigmoid_contrastive_loss(x, z, scale, bias, axis_name="data")

    ring = jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P(), P()), out_specs=P())
    loss, grads = jax.jit(jax.value_and_grad(ring, argnums=(0, 1, 2, 3)))(x, z, scale, bias)
    expected_loss, expected = siglip_float64(images, texts, scale, bias)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=2e-6)
    for got, want in zip(grads[:2], expected[:2], strict=True):
        for shard in got.addressable_shards:
            np.testing.assert_allclose(np.asarray(shard.data), want[shard.index], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([float(grads[2]), float(grads[3])], expected[2:], rtol=1e-4, atol=1e-6)
    print(
        f"process {jax.process_index()}/{jax.process_count()}: ring over {jax.device_count()} devices, loss "
        f"{float(loss):.6f} (dense float64 {expected_loss:.6f}): matches the single-device dense loss"
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
