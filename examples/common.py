"""Helpers shared by the examples, the notebooks and the benchmarks: the formulas jaxbce is compared with, a
float64 reference, a small Flax MLP and optional imports. Not part of the library: the examples import it from
beside them, the benchmarks and notebooks put ``examples/`` on ``sys.path``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def optional(module: str):
    """The module, or None where it is not installed (a peer the benchmarks skip)."""
    try:
        return __import__(module)
    except ImportError:
        return None


def start_distributed(description: str) -> None:
    """Parses ``--coordinator``, ``--num-processes``, ``--process-id`` and ``--cpu-devices`` and starts
    ``jax.distributed`` (with that many CPU devices and gloo collectives where ``--cpu-devices`` is given):
    the start of the multi-process examples. Nothing may touch the backend before it."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--cpu-devices", type=int, default=0, help="CPU devices per process (0: use accelerators)")
    args = parser.parse_args()
    if args.cpu_devices:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def naive_bce(x, y):
    """What a first version writes: sigmoid, then log (inf beyond |x| ~ 17 in float32)."""
    p = jax.nn.sigmoid(x)
    return -(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))


def textbook_bce(x, y):
    """The usual "stable" rewrite ``max(x, 0) - x*y + log1p(exp(-|x|))``, elementwise, under autodiff."""
    return jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


def bce_float64(logits, labels, pos_weight=1.0):
    """Elementwise ``pw*y*softplus(-x) + (1-y)*softplus(x)`` and its derivative in x, in float64 NumPy."""
    x, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    loss = pos_weight * y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)
    sigmoid = 1 / (1 + np.exp(-x))
    return loss, (1 - y) * sigmoid - pos_weight * y * (1 - sigmoid)


def siglip_float64(images, texts, logit_scale, logit_bias):
    """The SigLIP loss of the dense ``B x B`` logits and its gradients (images, texts, logit_scale,
    logit_bias), in float64 NumPy from :func:`bce_float64` with the identity as labels."""
    x, z = np.asarray(images, np.float64), np.asarray(texts, np.float64)
    dots = x @ z.T
    loss, d_logits = bce_float64(logit_scale * dots + logit_bias, np.eye(len(x)))
    d_logits = d_logits / len(x)
    gradients = (logit_scale * d_logits @ z, logit_scale * d_logits.T @ x, np.sum(d_logits * dots), np.sum(d_logits))
    return loss.sum() / len(x), gradients


class MLP(nnx.Module):
    """One GELU hidden layer. ``outputs=None``: one logit per example, shape ``(batch,)``."""

    def __init__(self, features: int, hidden: int, outputs: int | None = None, *, rngs: nnx.Rngs):
        self.squeeze = outputs is None
        self.hidden = nnx.Linear(features, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1 if outputs is None else outputs, rngs=rngs)

    def __call__(self, x):
        logits = self.out(nnx.gelu(self.hidden(x)))
        return logits[..., 0] if self.squeeze else logits
