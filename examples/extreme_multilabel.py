"""Extreme multi-label classification with sparse positives, without ever forming the (batch, classes) logits.

    python examples/extreme_multilabel.py [--classes 200000] [--steps 300] [--fused-update]

Synthetic data with power-law label frequencies: each class has a random direction in a 64-dimensional
input space, each example is the noisy sum of the directions of its 1 to 8 positive classes (frequent
classes are drawn far more often, as in product tagging or document labelling). A two-layer MLP is trained
with Optax on ``jaxbce.linear_binary_cross_entropy`` with ``positives=`` (class indices padded with -1), so
the last layer's logits, their gradient and the dense labels never exist. The script prints the memory
that XLA reserves for one train step, next to what the same step would need with materialised logits, and
precision@k on held-out examples.

With ``--fused-update`` the classifier's Adam step runs inside the loss's chunk loop
(``jaxbce.linear_binary_cross_entropy_update``): the kernel's gradient never exists either, the kernel and its
Adam moments are updated in place (donated), and the hidden layer is trained from the returned features
gradient. The script then prints the step's memory next to the fused loss followed by ``optax.adam``.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbce

INPUT_DIM, HIDDEN, MAX_POSITIVES = 64, 128, 8


def make_data(classes: int, examples: int, seed: int):
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(classes, INPUT_DIM)).astype(np.float32) / np.sqrt(INPUT_DIM)
    frequency = 1.0 / np.arange(1, classes + 1) ** 0.8  # Zipf-like
    frequency /= frequency.sum()
    counts = rng.integers(1, MAX_POSITIVES + 1, size=examples)
    positives = np.full((examples, MAX_POSITIVES), -1, np.int32)
    inputs = rng.normal(scale=0.1, size=(examples, INPUT_DIM)).astype(np.float32)
    for row, count in enumerate(counts):
        chosen = rng.choice(classes, size=count, replace=False, p=frequency)
        positives[row, :count] = chosen
        inputs[row] += directions[chosen].sum(axis=0)
    return inputs, positives


def init(classes: int, key):
    k1, k2 = jax.random.split(key)
    return {
        "hidden": jax.random.normal(k1, (INPUT_DIM, HIDDEN)) / np.sqrt(INPUT_DIM),
        "kernel": jax.random.normal(k2, (HIDDEN, classes)) * 0.01,
        # Initial bias -log(C): every class starts near its prior, as is usual for sigmoid heads over many labels.
        "bias": jnp.full((classes,), -np.log(classes), jnp.float32),
    }


def features(params, inputs):
    return jax.nn.gelu(inputs @ params["hidden"])


def fused_loss(params, inputs, positives):
    return jaxbce.linear_binary_cross_entropy(
        features(params, inputs), params["kernel"], positives=positives, bias=params["bias"], reduction="batchmean"
    )


def materialised_loss(params, inputs, labels):
    logits = features(params, inputs) @ params["kernel"] + params["bias"]
    return jnp.sum(jaxbce.binary_cross_entropy_with_logits(logits, labels, reduction="sum")) / logits.shape[0]


def precision_at_k(params, inputs, positives, k: int) -> float:
    """Mean over examples of |top-k predicted classes ∩ positives| / k; scored in row blocks (evaluation is
    the one place logits are formed, a block at a time)."""
    hits = []
    for start in range(0, inputs.shape[0], 256):
        logits = features(params, inputs[start : start + 256]) @ params["kernel"] + params["bias"]
        top = jax.lax.top_k(logits, k)[1]
        rows = positives[start : start + 256]
        hits.append((top[:, :, None] == rows[:, None, :]).any(-1).sum(-1))
    return float(np.concatenate(hits).mean() / k)


def fused_update_step(optimizer, params, state, inputs, positives, separate_step):
    """The train step with the classifier's update fused into the loss's chunk loop (the same Adam, with two
    states: the hidden layer's and the classifier's), its memory printed next to ``separate_step``'s (both with
    params and state donated). Returns the step and its params and state, each a (hidden layer, classifier)
    pair."""
    body, head = {"hidden": params["hidden"]}, {"kernel": params["kernel"], "bias": params["bias"]}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, inputs, positives):
        (body, head), (body_state, head_state) = params, state
        hidden, body_vjp = jax.vjp(lambda body: features(body, inputs), body)
        loss, features_grad, head, head_state = jaxbce.linear_binary_cross_entropy_update(
            hidden, head, head_state, positives=positives, optimizer=optimizer, reduction="batchmean"
        )
        updates, body_state = optimizer.update(body_vjp(features_grad)[0], body_state, body)
        return (optax.apply_updates(body, updates), head), (body_state, head_state), loss

    pairs = (body, head), (optimizer.init(body), optimizer.init(head))
    separate = jax.jit(separate_step, donate_argnums=(0, 1)).lower(params, state, inputs, positives).compile()
    for name, executable in (("fused update", step.lower(*pairs, inputs, positives).compile()),
                             ("fused loss, then adam", separate)):  # fmt: skip
        m = executable.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        print(f"train step memory, {name:>21}: {total / 2**20:8.1f} MiB "
              f"(temporaries {m.temp_size_in_bytes / 2**20:7.1f} MiB)")  # fmt: skip
    return step, *pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=200_000)
    parser.add_argument("--train", type=int, default=16_384)
    parser.add_argument("--test", type=int, default=1_024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--fused-update", action="store_true", help="the classifier's Adam step in the chunk loop")
    args = parser.parse_args()

    inputs, positives = make_data(args.classes, args.train + args.test, seed=0)
    train, test = (inputs[: args.train], positives[: args.train]), (inputs[args.train :], positives[args.train :])
    params = init(args.classes, jax.random.key(0))
    optimizer = optax.adam(3e-3)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, inputs, positives):
        loss, grads = jax.value_and_grad(fused_loss)(params, inputs, positives)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    batch_inputs = jnp.asarray(train[0][: args.batch])
    batch_positives = jnp.asarray(train[1][: args.batch])
    dense = jnp.zeros((args.batch, args.classes), jnp.bool_)
    fused_memory = jax.jit(jax.value_and_grad(fused_loss)).lower(params, batch_inputs, batch_positives).compile()
    materialised_memory = jax.jit(jax.value_and_grad(materialised_loss)).lower(params, batch_inputs, dense).compile()
    for name, compiled in (("fused", fused_memory), ("materialised logits", materialised_memory)):
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        print(f"value_and_grad memory, {name:>20}: {total / 2**20:8.1f} MiB "
              f"(temporaries {m.temp_size_in_bytes / 2**20:7.1f} MiB)")  # fmt: skip

    merged = lambda params: params  # noqa: E731
    if args.fused_update:
        step, params, state = fused_update_step(optimizer, params, state, batch_inputs, batch_positives, step)
        merged = lambda params: {**params[0], **params[1]}  # noqa: E731

    rng = np.random.default_rng(1)
    print(f"{args.classes} classes, {args.train} training examples; held-out precision@1 / @5:")
    print(f"  before training: {precision_at_k(merged(params), *test, 1):.3f} / "
          f"{precision_at_k(merged(params), *test, 5):.3f}")  # fmt: skip
    start = time.perf_counter()
    for i in range(args.steps):
        rows = rng.integers(0, args.train, size=args.batch)
        params, state, loss = step(params, state, train[0][rows], train[1][rows])
        if (i + 1) % max(args.steps // 5, 1) == 0:
            print(f"  step {i + 1:4d}  loss {float(loss):.4f}  ({time.perf_counter() - start:.1f} s)")
    print(f"  after training:  {precision_at_k(merged(params), *test, 1):.3f} / "
          f"{precision_at_k(merged(params), *test, 5):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
