"""Extreme multi-label classification with sparse positives, without ever forming the (batch, classes) logits.

    python examples/extreme_multilabel.py [--classes 200000] [--steps 300] [--loss bce|focal|asymmetric]
                                          [--fused-update [--dtype bfloat16]] [--head-sgd LR]

Synthetic data with power-law label frequencies: each class has a random direction in a 64-dimensional
input space, each example is the noisy sum of the directions of its positive classes (1 + a Poisson count,
``--labels-per-example`` on average, at most 16; frequent classes are drawn far more often, as in product
tagging or document labelling). ``--classes 670091`` gives data of Amazon-670K's shape: its label count, about
5.4 labels per example. A two-layer MLP is trained
with Optax on ``jaxbce.linear_binary_cross_entropy`` (``--loss focal``: ``jaxbce.linear_sigmoid_focal_loss``;
``--loss asymmetric``: ``jaxbce.linear_asymmetric_loss``; each with its defaults) with ``positives=`` (class
indices padded with -1), so the last layer's logits, their gradient and the dense labels never exist. The script
prints the memory that XLA reserves for one train step, next to what the same step would need with materialised
logits, and the held-out metrics of the Extreme Classification Repository: P@1/3/5, nDCG@3/5 and PSP@3/5
(propensities of Jain et al. with their default a = 0.55, b = 1.5, from the training label counts), from
``jaxbce.linear_top_k``, ``precision_at_k``, ``ndcg_at_k`` and ``propensity_scores``.

With ``--fused-update`` the classifier's Adam step runs inside the loss's chunk loop (``jaxbce.linear_update``):
the kernel's gradient never exists either, the kernel and its Adam moments are updated in place (donated), and
the hidden layer is trained from the returned features gradient. The script then prints the step's memory next
to the fused loss followed by ``optax.adam``. With ``--dtype bfloat16`` the classifier and its Adam moments are
16-bit, updated in float32 and rounded back stochastically with a new key at each step (``--nearest``: rounded
to nearest instead, as ``optax.apply_updates`` does). ``float16`` only with ``--head-sgd``: its range cannot hold
Adam's small second moments (Adam's step diverges).

``--head-sgd LR`` trains the classifier by plain SGD instead (no optimizer state, as ELMO does; the hidden layer
keeps Adam).

It runs at 2^23 classes on a 24 GiB machine (``--classes 8388608 --fused-update``), and at 2^24 with a bfloat16
classifier trained by SGD (``--classes 16777216 --fused-update --dtype bfloat16 --head-sgd 30``): the data are
drawn in O(examples), only the directions of classes that occur are kept, and the metrics are scored by blocks
of rows, the top-k formed chunk by chunk of classes.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbce

INPUT_DIM, HIDDEN, MAX_POSITIVES = 64, 128, 16


def make_data(classes: int, examples: int, seed: int, labels_per_example: float = 5.4):
    """Inputs and padded positives; each example has 1 + Poisson(labels_per_example - 1) draws (at most
    MAX_POSITIVES), class c drawn with probability proportional to (c + 1)^-0.8 (by the inverse of its
    cumulative distribution), and only the classes drawn get a direction."""
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(1.0 / np.arange(1, classes + 1) ** 0.8)
    drawn = np.searchsorted(cumulative, rng.uniform(0, cumulative[-1], size=(examples, MAX_POSITIVES)))
    drawn = np.minimum(drawn, classes - 1)
    counts = np.minimum(1 + rng.poisson(labels_per_example - 1, size=examples), MAX_POSITIVES)
    positives = np.full((examples, MAX_POSITIVES), -1, np.int32)
    for row, count in enumerate(counts):
        chosen = np.unique(drawn[row, :count])  # a repeated draw counts once
        positives[row, : chosen.size] = chosen
    used = np.unique(positives[positives >= 0])
    directions = rng.normal(size=(used.size, INPUT_DIM)).astype(np.float32) / np.sqrt(INPUT_DIM)
    where = np.searchsorted(used, np.maximum(positives, 0))
    inputs = rng.normal(scale=0.1, size=(examples, INPUT_DIM)).astype(np.float32)
    inputs += np.where(positives[..., None] >= 0, directions[where], 0).sum(axis=1)
    return inputs, positives


def init(classes: int, seed: int, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    # The kernel drawn 2^20 classes at a time into an array of its own dtype: drawing it whole would take float32
    # temporaries several times its size (24 GiB at 2^24 classes).
    kernel = np.empty((HIDDEN, classes), jnp.dtype(dtype))
    for start in range(0, classes, 2**20):
        block = kernel[:, start : start + 2**20]
        block[...] = rng.standard_normal(block.shape, np.float32) * np.float32(0.01)
    return {
        "hidden": jnp.asarray(rng.standard_normal((INPUT_DIM, HIDDEN), np.float32) / np.float32(np.sqrt(INPUT_DIM))),
        "kernel": jnp.asarray(kernel),
        # Initial bias -log(C): every class starts near its prior, as is usual for sigmoid heads over many labels.
        "bias": jnp.full((classes,), -np.log(classes), dtype),
    }


def features(params, inputs):
    return jax.nn.gelu(inputs @ params["hidden"])


# --loss: the fused loss and the elementwise loss it equals on the materialised logits.
LOSSES = {
    "bce": (jaxbce.linear_binary_cross_entropy, jaxbce.binary_cross_entropy_with_logits),
    "focal": (jaxbce.linear_sigmoid_focal_loss, jaxbce.sigmoid_focal_loss),
    "asymmetric": (jaxbce.linear_asymmetric_loss, jaxbce.asymmetric_loss),
}


def fused_loss(params, inputs, positives, loss="bce"):
    return LOSSES[loss][0](
        features(params, inputs), params["kernel"], positives=positives, bias=params["bias"], reduction="batchmean"
    )


def materialised_loss(params, inputs, labels, loss="bce"):
    logits = features(params, inputs) @ params["kernel"] + params["bias"]
    return LOSSES[loss][1](logits, labels, reduction="sum") / logits.shape[0]


@jax.jit
def _top_5(params, inputs):
    return jaxbce.linear_top_k(features(params, inputs), params["kernel"], 5, bias=params["bias"])[1]


def evaluate(params, inputs, positives, propensities) -> dict[str, float]:
    """The held-out metrics of the Extreme Classification Repository, 256 rows at a time: P@k and nDCG@k, and
    PSP@k normalised by the same metric of the ideal ranking (each example's labels by 1 / propensity)."""
    top = np.concatenate([_top_5(params, inputs[start : start + 256]) for start in range(0, len(inputs), 256)])
    gain = np.where(positives >= 0, 1 / np.asarray(propensities)[positives], 0)
    ideal = np.take_along_axis(positives, np.argsort(-gain, axis=1, kind="stable"), axis=1)
    ideal = np.concatenate([ideal, np.full((len(ideal), 5), -1, ideal.dtype)], axis=1)  # at least 5 columns
    metrics = {}
    for k in (1, 3, 5):
        metrics[f"P@{k}"] = float(jaxbce.precision_at_k(top, positives=positives, k=k).mean())
    for k in (3, 5):
        metrics[f"nDCG@{k}"] = float(jaxbce.ndcg_at_k(top, positives=positives, k=k).mean())
    for k in (3, 5):
        scored = jaxbce.precision_at_k(top, positives=positives, k=k, propensities=propensities).mean()
        best = jaxbce.precision_at_k(ideal, positives=positives, k=k, propensities=propensities).mean()
        metrics[f"PSP@{k}"] = float(scored / best)
    return metrics


def print_metrics(when: str, metrics: dict[str, float]) -> None:
    print(f"  {when}: " + "  ".join(f"{name} {value:.3f}" for name, value in metrics.items()))


def print_memory(name: str, compiled) -> None:
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    print(f"train step memory, {name:>21}: {total / 2**20:9.1f} MiB "
          f"(temporaries {m.temp_size_in_bytes / 2**20:8.1f} MiB)")  # fmt: skip


def fused_update_step(optimizers, params, inputs, positives, key, separate_step, separate_optimizer, rounding, loss):
    """The train step with the classifier's update fused into the loss's chunk loop (``optimizers``: the hidden
    layer's and the classifier's), its memory printed next to ``separate_step``'s (both with params and state
    donated; ``separate_optimizer`` is the two optimizers as one). Returns the step and its params and state,
    each a (hidden layer, classifier) pair; the step takes a key, which rounds a 16-bit classifier stochastically
    where ``rounding``."""
    body_optimizer, head_optimizer = optimizers
    body, head = {"hidden": params["hidden"]}, {"kernel": params["kernel"], "bias": params["bias"]}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, inputs, positives, key):
        (body, head), (body_state, head_state) = params, state
        hidden, body_vjp = jax.vjp(lambda body: features(body, inputs), body)
        value, features_grad, head, head_state = jaxbce.linear_update(
            LOSSES[loss][0], hidden, head, head_state, positives=positives, optimizer=head_optimizer,
            reduction="batchmean", key=key if rounding else None,
        )  # fmt: skip
        updates, body_state = body_optimizer.update(body_vjp(features_grad)[0], body_state, body)
        return (optax.apply_updates(body, updates), head), (body_state, head_state), value

    pairs = (body, head), (body_optimizer.init(body), head_optimizer.init(head))
    print_memory("fused update", step.lower(*pairs, inputs, positives, key).compile())
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    state = jax.eval_shape(separate_optimizer.init, abstract)
    separate = jax.jit(separate_step, donate_argnums=(0, 1)).lower(abstract, state, inputs, positives, None)
    print_memory("fused loss, then optax", separate.compile())
    return step, *pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=200_000)
    parser.add_argument("--train", type=int, default=16_384)
    parser.add_argument("--test", type=int, default=1_024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--labels-per-example", type=float, default=5.4, help="the mean number of positives")
    parser.add_argument("--loss", default="bce", choices=list(LOSSES), help="the fused loss, with its defaults")
    parser.add_argument("--fused-update", action="store_true", help="the classifier's Adam step in the chunk loop")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the classifier's and its Adam moments' dtype (with --fused-update)")  # fmt: skip
    parser.add_argument("--nearest", action="store_true", help="16-bit: round to nearest, not stochastically")
    parser.add_argument("--head-sgd", type=float, metavar="LR",
                        help="train the classifier by plain SGD at this learning rate (no optimizer state, as ELMO "
                        "does), not Adam")  # fmt: skip
    args = parser.parse_args()
    if args.dtype != "float32" and not args.fused_update:
        parser.error("--dtype bfloat16 or float16 needs --fused-update")
    if args.dtype == "float16" and args.head_sgd is None:
        parser.error("--dtype float16 needs --head-sgd: float16 cannot hold Adam's second moments")

    inputs, positives = make_data(args.classes, args.train + args.test, 0, args.labels_per_example)
    train, test = (inputs[: args.train], positives[: args.train]), (inputs[args.train :], positives[args.train :])
    params = init(args.classes, 0, jnp.dtype(args.dtype))
    optimizers = optax.adam(3e-3), optax.adam(3e-3) if args.head_sgd is None else optax.sgd(args.head_sgd)
    optimizer = optax.multi_transform(
        dict(zip(("body", "head"), optimizers, strict=True)), {"hidden": "body", "kernel": "head", "bias": "head"}
    )

    loss_of = functools.partial(fused_loss, loss=args.loss)

    def step(params, state, inputs, positives, key):
        loss, grads = jax.value_and_grad(loss_of)(params, inputs, positives)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    batch_inputs = jnp.asarray(train[0][: args.batch])
    batch_positives = jnp.asarray(train[1][: args.batch])
    dense = jax.ShapeDtypeStruct((args.batch, args.classes), jnp.bool_)
    fused_memory = jax.jit(jax.value_and_grad(loss_of)).lower(params, batch_inputs, batch_positives).compile()
    materialised = functools.partial(materialised_loss, loss=args.loss)
    materialised_memory = jax.jit(jax.value_and_grad(materialised)).lower(params, batch_inputs, dense).compile()
    for name, compiled in (("fused", fused_memory), ("materialised logits", materialised_memory)):
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        print(f"value_and_grad memory, {name:>20}: {total / 2**20:9.1f} MiB "
              f"(temporaries {m.temp_size_in_bytes / 2**20:8.1f} MiB)")  # fmt: skip

    # The rounding's random numbers, a new key each step: "rbg" (XLA's RngBitGenerator) takes half the CPU time
    # of the default threefry.
    key = jax.random.key(1, impl="rbg")
    merged = lambda params: params  # noqa: E731
    if args.fused_update:
        step, params, state = fused_update_step(
            optimizers, params, batch_inputs, batch_positives, key, step, optimizer, not args.nearest, args.loss
        )
        merged = lambda params: {**params[0], **params[1]}  # noqa: E731
    else:
        step, state = jax.jit(step), optimizer.init(params)

    rng = np.random.default_rng(1)
    counts = np.bincount(train[1][train[1] >= 0], minlength=args.classes).astype(np.float32)
    propensities = jaxbce.propensity_scores(counts, args.train)
    print(f"{args.classes} classes ({args.dtype} classifier), {args.loss} loss, {args.train} training examples, "
          f"{np.mean(np.sum(positives >= 0, axis=1)):.2f} labels per example; held-out metrics:")  # fmt: skip
    print_metrics("before training", evaluate(merged(params), *test, propensities))
    start = time.perf_counter()
    for i in range(args.steps):
        rows = rng.integers(0, args.train, size=args.batch)
        params, state, loss = step(params, state, train[0][rows], train[1][rows], jax.random.fold_in(key, i))
        if (i + 1) % max(args.steps // 5, 1) == 0:
            print(f"  step {i + 1:4d}  loss {float(loss):.4f}  ({time.perf_counter() - start:.1f} s)", flush=True)
    print_metrics("after training ", evaluate(merged(params), *test, propensities))


if __name__ == "__main__":
    main()
