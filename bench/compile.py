"""What a loss costs before its first step: trace + lower and compile time, and StableHLO size, against optax.

    python bench/compile.py     # or: make bench-compile

For every registered loss, the fused loss and the SigLIP loss, side by side in one process with its optax
counterpart where there is one (``optax.sigmoid_binary_cross_entropy``, ``optax.sigmoid_focal_loss``, which
the asymmetric loss is also set against, and the materialised logits for the fused and contrastive losses):

* ``value_and_grad``: ``jax.jit(jax.value_and_grad(loss))`` at (16, 16) (the fused loss at batch 16, D 32,
  C 512; the SigLIP loss at 16 pairs of 32-dimensional embeddings);
* ``hessian``: ``jax.jit(jax.hessian(loss))`` at (2, 4), for the elementwise losses;
* ``check_grads``: ``jax.test_util.check_grads(order=2, modes=("fwd", "rev"))`` on 4 elements, the call a
  gradient-checking user waits for (eager: it traces and compiles as it goes);
* the first call of ``bench/train_step.py``'s Adam step (trace, compile and one run), at each of its sizes.

Every time is the median of ``ROUNDS`` rounds, each after ``jax.clear_caches()`` (so that nothing traced or
compiled before is reused), with jaxbce and optax alternating. Writes ``bench/results/compile-<backend>.json``
and ``.png``.
"""

import datetime
import functools
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import measure  # bench/measure.py, beside this script
import numpy as np
import optax
import train_step  # bench/train_step.py, beside this script
from jax.test_util import check_grads

import jaxbce

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROUNDS = 5


def _sample(shape, seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=shape) * 3, jnp.float32)
    labels = jnp.asarray(rng.uniform(size=shape) < 0.3, jnp.float32)
    return logits, labels


def _elementwise_cases():
    """(name, jaxbce's loss of (logits, second argument), the name of the optax counterpart and the counterpart, or
    None, and how the second argument is made from 0/1 labels)."""
    bce = ("sigmoid_binary_cross_entropy", lambda x, y: optax.sigmoid_binary_cross_entropy(x, y).mean())
    focal = ("sigmoid_focal_loss", lambda x, y: optax.sigmoid_focal_loss(x, y).mean())
    labels = lambda y: y  # noqa: E731
    poly1 = functools.partial(jaxbce.binary_cross_entropy_with_logits, poly_epsilon=1.0)
    return [
        ("binary_cross_entropy_with_logits", jaxbce.binary_cross_entropy_with_logits, bce, labels),
        ("binary_cross_entropy", lambda x, y: jaxbce.binary_cross_entropy(jax.nn.sigmoid(x), y), None, labels),
        ("sigmoid_focal_loss", jaxbce.sigmoid_focal_loss, focal, labels),
        ("asymmetric_loss", jaxbce.asymmetric_loss, focal, labels),
        ("Poly-1 (poly_epsilon=1)", poly1, None, labels),
        ("binary_entropy", lambda x, _: jaxbce.binary_entropy(x), None, labels),
        ("binary_kl_divergence", jaxbce.binary_kl_divergence, None, lambda y: y * 4 - 2),
    ]


def _trace_and_compile(function, args) -> dict:
    """Seconds to trace and lower ``jax.jit(function)``, seconds to compile it, and its StableHLO in KiB, from
    scratch."""
    jax.clear_caches()
    start = time.perf_counter()
    lowered = jax.jit(function).lower(*args)
    traced = time.perf_counter()
    lowered.compile()
    compiled = time.perf_counter()
    return {
        "trace_lower_s": traced - start,
        "compile_s": compiled - traced,
        "total_s": compiled - start,
        "stablehlo_kib": len(lowered.as_text()) / 1024,
    }


def _value_and_grad_cost(loss, args, argnums=0) -> dict:
    return _trace_and_compile(jax.value_and_grad(loss, argnums), args)


def _hessian_cost(loss, args) -> dict:
    return _trace_and_compile(jax.hessian(loss), args)


def _check_grads_seconds(loss, x, second) -> dict:
    jax.clear_caches()
    start = time.perf_counter()
    check_grads(lambda z: loss(z, second), (x,), order=2, modes=("fwd", "rev"))
    return {"total_s": time.perf_counter() - start}


def _median(runs: list[dict]) -> dict:
    return {key: float(np.median([run[key] for run in runs])) for key in runs[0]}


def _side_by_side(measure_one, forms: dict, *args) -> dict:
    """``measure_one(form, *args)`` for each form, ``ROUNDS`` times with the forms alternating; medians."""
    runs = {name: [] for name in forms}
    for _ in range(ROUNDS):
        for name, form in forms.items():
            runs[name].append(measure_one(form, *args))
    return {name: _median(values) for name, values in runs.items()}


def _with_ratio(result: dict) -> dict:
    if "optax" in result:
        result["jaxbce / optax"] = {key: result["jaxbce"][key] / result["optax"][key] for key in result["jaxbce"]}
    return result


def elementwise_rows() -> list[dict]:
    rows = []
    x, y = _sample((16, 16))
    small_x, small_y = _sample((2, 4), seed=1)
    for name, loss, peer, second_of in _elementwise_cases():
        forms = {"jaxbce": loss} if peer is None else {"jaxbce": loss, "optax": peer[1]}
        row = {"loss": name, "optax counterpart": None if peer is None else peer[0]}
        second, small_second = second_of(y), second_of(small_y)
        row["value_and_grad"] = _with_ratio(_side_by_side(_value_and_grad_cost, forms, (x, second)))
        row["hessian"] = _with_ratio(_side_by_side(_hessian_cost, forms, (small_x, small_second)))
        row["check_grads"] = _with_ratio(_side_by_side(_check_grads_seconds, forms, small_x[0], small_second[0]))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def fused_and_contrastive_rows() -> list[dict]:
    rng = np.random.default_rng(2)
    features = jnp.asarray(rng.normal(size=(16, 32)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(32, 512)) / 6, jnp.float32)
    bias = jnp.zeros(512, jnp.float32)
    labels = jnp.asarray(rng.uniform(size=(16, 512)) < 0.05, jnp.float32)
    fused = {
        "jaxbce": lambda f, k, b: jaxbce.linear_binary_cross_entropy(f, k, labels, bias=b),
        "optax": lambda f, k, b: optax.sigmoid_binary_cross_entropy(f @ k + b, labels).mean(),
    }
    images = jnp.asarray(rng.normal(size=(16, 32)), jnp.float32)
    texts = jnp.asarray(rng.normal(size=(16, 32)), jnp.float32)
    scale, shift = jnp.float32(np.log(10.0)), jnp.float32(-10.0)

    def materialised(i, t, s, b):
        # big_vision's SigLIP loss on the full logits: -sum log_sigmoid(z * logits) / n.
        logits = i @ t.T * jnp.exp(s) + b
        z = 2 * jnp.eye(i.shape[0]) - 1
        return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / i.shape[0]

    contrastive = {"jaxbce": jaxbce.sigmoid_contrastive_loss, "optax": materialised}
    rows = []
    for name, forms, args in (
        ("linear_binary_cross_entropy", fused, (features, kernel, bias)),
        ("sigmoid_contrastive_loss", contrastive, (images, texts, scale, shift)),
    ):
        argnums = tuple(range(len(args)))
        row = {
            "loss": name,
            "optax counterpart": "optax.sigmoid_binary_cross_entropy of the materialised logits"
            if name.startswith("linear")
            else "big_vision's log_sigmoid form on the materialised logits",
            "value_and_grad": _with_ratio(_side_by_side(_value_and_grad_cost, forms, args, argnums)),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _first_call_seconds(loss, optimizer, args) -> dict:
    jax.clear_caches()
    start = time.perf_counter()
    jax.block_until_ready(train_step.step_for(loss, optimizer)(*args))
    return {"first_call_s": time.perf_counter() - start}


def train_step_first_calls() -> list[dict]:
    """The first call of bench/train_step.py's jitted Adam step (trace, compile and one run), jaxbce's loss
    against optax's."""
    rows = []
    optimizer = optax.adam(1e-3)
    hidden = train_step.HIDDEN[0]
    for batch, classes in train_step.SHAPES:
        args = train_step.inputs(hidden, batch, classes, optimizer)

        forms = {name: train_step.LOSSES[name] for name in ("jaxbce", "optax")}
        measured = _side_by_side(_first_call_seconds, forms, optimizer, args)
        row = {"hidden": hidden, "batch": batch, "classes": classes, **_with_ratio(measured)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def plot(result, path):
    rows = result["elementwise"] + result["fused_and_contrastive"]
    kinds = ("value_and_grad", "hessian", "check_grads")
    with measure.figure(path, len(kinds), (16, 4.5)) as axes:
        for ax, kind in zip(axes, kinds, strict=True):
            selected = [row for row in rows if kind in row]
            positions = np.arange(len(selected))
            for offset, name in ((-0.2, "jaxbce"), (0.2, "optax")):
                seconds = [row[kind].get(name, {}).get("total_s", np.nan) for row in selected]
                ax.bar(positions + offset, seconds, width=0.4, label=name)
            ax.set(xticks=positions, yscale="log", ylabel="seconds (median, from cleared caches)")
            ax.set_xticklabels([row["loss"].replace("_", " ") for row in selected], rotation=35, ha="right", fontsize=8)
            ax.set_title(f"jit({kind})" if kind != "check_grads" else "check_grads(order=2)")
            ax.grid(True, axis="y", which="both", alpha=0.3)
        axes[0].legend()


def main():
    backend = jax.default_backend()
    # One untimed round first: imports and one-time set-up of jax, optax and jaxbce are not what is measured.
    x, y = _sample((16, 16))
    for f in (jaxbce.sigmoid_focal_loss, lambda a, b: optax.sigmoid_focal_loss(a, b).mean()):
        _trace_and_compile(jax.value_and_grad(f), (x, y))
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {backend}",
        "versions": {"jax": jax.__version__, "optax": optax.__version__},
        "elementwise": elementwise_rows(),
        "fused_and_contrastive": fused_and_contrastive_rows(),
        "train_step_first_call": train_step_first_calls(),
    }
    out = ROOT / "bench" / "results" / f"compile-{backend}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print("wrote", out, "and", out.with_suffix(".png"))


if __name__ == "__main__":
    main()
