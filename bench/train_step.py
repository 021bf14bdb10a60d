"""What the loss costs inside a train step: a jitted Adam step of an MLP with jaxbce's loss and with optax's.

    python bench/train_step.py     # or: make bench-train-step

For batch x classes in (32 x 8, 256 x 100, 1024 x 1000, 256 x 20000), the same step (a one-hidden-layer MLP,
256 inputs, 64 or 512 hidden units; ``jax.value_and_grad`` of the mean loss, then ``optax.adam``) with

* ``jaxbce``: ``binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)``;
* ``optax``: ``optax.sigmoid_binary_cross_entropy`` with the positive term weighted by hand (optax has no
  ``pos_weight``): ``pw * y * softplus(-x) + (1 - y) * softplus(x)`` from its ``log_sigmoid`` form;
* ``model only``: the step with ``mean(logits)`` as the loss: what is left when the loss costs nothing.

Medians of interleaved rounds of repeated steps after warm-up, side by side in one process; writes
``bench/results/train-step-<backend>.json`` and ``.png``.
"""

import datetime
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import measure  # bench/measure.py, beside this script
import numpy as np
import optax

import jaxbce

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPES = ((32, 8), (256, 100), (1024, 1000), (256, 20000))
FEATURES, HIDDEN = 256, (64, 512)


def optax_weighted(logits, labels, pos_weight):
    # optax's loss is -y log_sigmoid(x) - (1 - y) log_sigmoid(-x); the positive term weighted by pos_weight.
    return jnp.mean(-pos_weight * labels * jax.nn.log_sigmoid(logits) - (1 - labels) * jax.nn.log_sigmoid(-logits))


LOSSES = {
    "jaxbce": lambda z, y, pw: jaxbce.binary_cross_entropy_with_logits(z, y, pos_weight=pw),
    "optax": optax_weighted,
    "model only": lambda z, y, pw: jnp.mean(z),
}


def step_for(loss, optimizer):
    def apply(params, x):
        return jax.nn.gelu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]

    @jax.jit
    def step(params, state, x, y, pw):
        value, grads = jax.value_and_grad(lambda p: loss(apply(p, x), y, pw))(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    return step


def inputs(hidden: int, batch: int, classes: int, optimizer) -> tuple:
    """The step's arguments: (params, optimizer state, inputs, labels, pos_weight)."""
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(FEATURES, hidden)) / 16, jnp.float32),
        "b1": jnp.zeros(hidden),
        "w2": jnp.asarray(rng.normal(size=(hidden, classes)) / np.sqrt(hidden), jnp.float32),
        "b2": jnp.zeros(classes),
    }
    x = jnp.asarray(rng.normal(size=(batch, FEATURES)), jnp.float32)
    y = jnp.asarray(rng.uniform(size=(batch, classes)) < 0.05, jnp.float32)
    pw = jnp.asarray(rng.uniform(1, 20, size=classes), jnp.float32)
    return params, optimizer.init(params), x, y, pw


def run(rounds_count: int = 7) -> list[dict]:
    rows = []
    optimizer = optax.adam(1e-3)
    for hidden in HIDDEN:
        for batch, classes in SHAPES:
            args = inputs(hidden, batch, classes, optimizer)
            compiled = {name: step_for(loss, optimizer).lower(*args).compile() for name, loss in LOSSES.items()}
            # Interleaved rounds (the three steps alternate), each the median of enough steps for 0.2 s.
            first = measure.median_seconds(compiled["jaxbce"], args, 3)
            repeats = max(5, int(0.2 / first))
            rounds = {name: [] for name in LOSSES}
            for _ in range(rounds_count):
                for name, step in compiled.items():
                    rounds[name].append(measure.median_seconds(step, args, repeats))
            seconds = {name: float(np.median(values)) for name, values in rounds.items()}
            loss_part = {name: seconds[name] - seconds["model only"] for name in ("jaxbce", "optax")}
            row = {
                "hidden": hidden,
                "batch": batch,
                "classes": classes,
                "seconds": seconds,
                "jaxbce step / optax step": seconds["jaxbce"] / seconds["optax"],
                "loss ns per element (step minus model only)": {
                    name: value / (batch * classes) * 1e9 for name, value in loss_part.items()
                },
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def plot(rows, path):
    with measure.figure(path, len(HIDDEN), (6 * len(HIDDEN), 4.5)) as axes:
        for ax, hidden in zip(axes, HIDDEN, strict=True):
            selected = [row for row in rows if row["hidden"] == hidden]
            labels = [f"{row['batch']} x {row['classes']}" for row in selected]
            positions = np.arange(len(selected))
            for offset, name in zip((-0.27, 0.0, 0.27), LOSSES, strict=True):
                ms = [row["seconds"][name] * 1e3 for row in selected]
                ax.bar(positions + offset, ms, width=0.27, label=name)
            ax.set(xticks=positions, xticklabels=labels, yscale="log", ylabel="ms per step (median)")
            ax.set_title(f"Adam step, MLP 256 -> {hidden} -> classes")
            ax.grid(True, axis="y", which="both", alpha=0.3)
        axes[0].legend()


def main():
    backend = jax.default_backend()
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {backend}",
        "versions": {"jax": jax.__version__, "optax": optax.__version__},
        "rows": run(),
    }
    out = ROOT / "bench" / "results" / f"train-step-{backend}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result["rows"], out.with_suffix(".png"))
    print("wrote", out, "and", out.with_suffix(".png"))


if __name__ == "__main__":
    main()
