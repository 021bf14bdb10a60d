"""Every error message in docs/errors.md, raised by a call that a user could make, and asserted verbatim: the
table's rows, in order, pair with ``CALLS``."""

import pathlib
import re

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.experimental import checkify, sparse
from jax.sharding import PartitionSpec as P

import devices
import jaxbce
from jax_compat import set_mesh

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAN = float("nan")
bce = jaxbce.binary_cross_entropy_with_logits
fused = jaxbce.linear_binary_cross_entropy
X, Y = jnp.zeros((2, 3)), jnp.ones((2, 3))


def _sharded_chunk(chunk_size):
    """The fused loss with its kernel sharded over 2 devices along its classes (Explicit axes)."""
    mesh = devices.mesh(jax.sharding.AxisType.Explicit)
    kernel = jax.device_put(jnp.ones((3, 64)), jax.sharding.NamedSharding(mesh, P(None, "model")))
    with set_mesh(mesh):
        return jaxbce.linear_binary_cross_entropy(X, kernel, jnp.zeros((2, 64)), chunk_size=chunk_size)


def _update_with_another_optimizers_state():
    params = {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}
    state = optax.sgd(0.1).init(params)
    return jaxbce.linear_binary_cross_entropy_update(X, params, state, jnp.zeros((2, 4)), optimizer=optax.adam(1e-3))


def _inside_shard_map(axis_name):
    mesh = devices.mesh(jax.sharding.AxisType.Auto, shape=(8,), names=("data",))
    rows = jnp.ones((16, 4))
    loss = lambda x: jaxbce.sigmoid_contrastive_loss(x, x, 1.0, 0.0, axis_name=axis_name)  # noqa: E731
    return jax.shard_map(loss, mesh=mesh, in_specs=P("data"), out_specs=P())(rows)


# (exception, call) for each row of the table in docs/errors.md, in order.
CALLS = [
    (ValueError, lambda: bce(jnp.zeros((4, 1)), jnp.zeros(4))),
    (ValueError, lambda: bce(jnp.zeros((4, 2)), jnp.zeros((4, 2)), pos_weight=jnp.ones(3))),
    (TypeError, lambda: bce(jnp.zeros(3, jnp.int32), jnp.zeros(3))),
    (TypeError, lambda: bce(jnp.zeros(3), jnp.zeros(3, jnp.complex64))),
    (TypeError, lambda: bce(jnp.zeros(3), jnp.zeros(3), weight=jnp.ones(3, jnp.complex64))),
    (TypeError, lambda: bce(jnp.zeros(3), jnp.zeros(3), where=jnp.ones(3))),
    (TypeError, lambda: bce(X, "labels.npy")),
    (TypeError, lambda: bce(X, None)),
    (TypeError, lambda: bce(X, Y, 2.0)),
    (TypeError, lambda: bce(X, Y, reduce="sum")),
    (ValueError, lambda: bce(X, Y, reduction="avg")),
    (ValueError, lambda: bce(X, Y, axis=2)),
    (ValueError, lambda: bce(X, Y, axis=(0, -2))),
    (TypeError, lambda: bce(X, Y, axis=1.0)),
    (ValueError, lambda: bce(X, Y, axis=0, reduction="none")),
    (ValueError, lambda: bce(X, Y, label_smoothing=1.5)),
    (TypeError, lambda: bce(X, Y, label_smoothing="0.1")),
    (TypeError, lambda: jaxbce.sigmoid_focal_loss(X, Y, gamma=jnp.asarray(2.0))),
    (TypeError, lambda: jax.jit(lambda s: bce(X, Y, label_smoothing=s))(0.1)),
    (ValueError, lambda: jaxbce.sigmoid_focal_loss(X, Y, gamma=-1.0)),
    (ValueError, lambda: jaxbce.sigmoid_focal_loss(X, Y, alpha=-1)),
    (ValueError, lambda: bce(X, Y, ignore_label=1)),
    (ValueError, lambda: bce(X, jnp.array([[0, 1, 255]] * 2, jnp.uint8), ignore_label=-1)),
    (TypeError, lambda: jax.jit(bce)(X, Y, reduction="sum")),
    (ValueError, lambda: jaxbce.linear_binary_cross_entropy(X, jnp.ones((3, 4)), jnp.ones((2, 4)), weight=jnp.ones(2))),
    (ValueError, lambda: fused(X, jnp.ones((3, 4)), jnp.ones((2, 4)), kernel_layout="io")),
    (ValueError, lambda: fused(X, jnp.ones((3, 4)), sparse.BCOO.fromdense(jnp.ones((2, 5))))),
    (ValueError, lambda: _sharded_chunk(3)),
    (TypeError, _update_with_another_optimizers_state),
    (ValueError, lambda: _inside_shard_map(None)),
    (ValueError, lambda: _inside_shard_map("model")),
    (TypeError, lambda: jax.jit(jaxbce.checked(bce))(X, Y)),
    (checkify.JaxRuntimeError, lambda: jaxbce.checked(bce)(X, Y.at[1, 1].set(2.0))),
    (checkify.JaxRuntimeError, lambda: jaxbce.checked(bce)(X, Y, pos_weight=jnp.array([1.0, 1.0, -3.0]))),
    (checkify.JaxRuntimeError, lambda: jaxbce.checked(bce)(X.at[0, 0].set(NAN), Y)),
    (checkify.JaxRuntimeError, lambda: jaxbce.checked(jaxbce.linear_binary_cross_entropy)(
        X, jnp.ones((3, 4)), positives=jnp.array([[0, 4]] * 2))),
    (checkify.JaxRuntimeError, lambda: jaxbce.checked(jaxbce.pos_weight_from_counts)(jnp.array([5, 20]), 10)),
]  # fmt: skip


def _first_line(error: Exception) -> str:
    """The message as a user reads it: its first line, without checkify's " (`check` failed)" suffix; for an error
    that JAX raises before jaxbce runs (a jaxbce function wrapped in jax.jit), the line of it that holds no
    address, which is what a user searches for."""
    lines = str(error).split("\n")
    if lines[0].startswith("Error interpreting argument to <function"):
        return lines[1]
    return lines[0].removesuffix(" (`check` failed)")


def _documented_rows() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "errors.md").read_text()
    return re.findall(r"^\| `([\w.]+)` \| `(.+?)` \|", text, flags=re.MULTILINE)


def test_every_documented_message_is_raised_verbatim():
    rows = _documented_rows()
    assert len(rows) == len(CALLS), (len(rows), len(CALLS))
    for (documented_type, message), (error_type, call) in zip(rows, CALLS, strict=True):
        with pytest.raises(error_type) as raised:
            call()
        assert documented_type.split(".")[-1] == error_type.__name__, (documented_type, error_type)
        assert _first_line(raised.value) == message


if __name__ == "__main__":  # prints the table's first two columns from what the calls raise
    for error_type, call in CALLS:
        try:
            call()
            print("NO ERROR", error_type)
        except Exception as error:
            print(f"| `{type(error).__name__}` | `{_first_line(error)}` |")
