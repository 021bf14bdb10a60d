"""Memory and time of the fused linear + BCE loss against the materialised logits, side by side in one process.

    python bench/fused.py [--quick]     # or: make bench-fused

For each ``(batch, D, C)``, ``jax.jit(jax.value_and_grad(loss, argnums=(features, kernel, bias)))`` of

* ``fused``: ``jaxbce.linear_binary_cross_entropy(features, kernel, labels, bias=bias)`` (or ``positives=``);
* ``jaxbce``: ``jaxbce.binary_cross_entropy_with_logits(features @ kernel + bias, labels)``, the materialised
  logits;
* ``optax``: ``optax.sigmoid_binary_cross_entropy(features @ kernel + bias, labels).mean()``;
* ``matmul floor``: ``sum(features @ kernel + bias)`` with its gradient: the three matmuls that any of them
  must do, and nothing else.

Memory is the compiled executable's ``memory_analysis()`` (argument, output and temporary bytes), so it is
measured even where running the materialised form would not fit. Times are medians of repeated runs after a
warm-up, for the sizes where every form fits comfortably in memory. Dense labels are bool; the sparse rows
pass ``positives`` with ``P`` class indices per example (power-law class frequencies) and give the
materialised forms the dense bool labels those indices mean.

The classifier's Adam step (``UPDATE_SHAPES``, sparse positives; ``--update-only`` reruns just these rows):
``jaxbce.linear_binary_cross_entropy_update`` against the fused loss's gradient followed by ``optax.adam`` and
``optax.apply_updates``, both jitted with the parameters and the optimizer state donated, and the fused update
of a bfloat16 head and Adam state rounded stochastically (``key``). Memory is what a step holds: arguments, plus
outputs not aliased to them, plus temporaries; times are medians of consecutive steps.

Real label sets (``LABEL_SETS``; ``--label-sets-only`` reruns just these): at the label counts of real data sets
and a prime, B = 1024, D = 128, Adam, sparse positives, the compiled temporaries of the donated fused update and
of the fused loss's gradient, with the kernel ``(D, C)`` and ``(C, D)``; the update's step time per class at
Amazon-670K's 670,091 next to 655,360 (5 x 2^17); and the fused loss's gradient with labels as a
``jax.experimental.sparse.BCOO`` against the same entries as padded ``positives``.

The sigmoid family (``FAMILY_SHAPE``; ``--family-only`` reruns just these): the fused focal and ASL losses'
gradients (temporaries against the materialised logits, time against the fused BCE), their donated Adam steps by
``jaxbce.linear_update`` against the fused loss followed by ``optax.adam``, and ``jaxbce.linear_top_k`` against
``lax.top_k`` of the materialised logits.

Writes ``bench/results/fused-<backend>.json`` and ``.png``.
"""

import argparse
import datetime
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import measure  # bench/measure.py, beside this script
import numpy as np
import optax

import jaxbce

ROOT = pathlib.Path(__file__).resolve().parents[1]
# (batch, D, C, P): P is None for dense labels.
SHAPES = [
    (1024, 256, 2**14, None),
    (1024, 256, 2**16, None),
    (1024, 256, 2**16, 32),
    (1024, 128, 2**18, None),
    (1024, 128, 2**20, None),
    (1024, 128, 2**20, 32),
]
# Run (not only compile) a form only while its peak (argument + output + temp) stays below this.
RUN_LIMIT_BYTES = 6 * 2**30


def _inputs(batch, dim, classes, positives_per_row, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, dim)).astype(np.float32)
    kernel = (rng.normal(size=(dim, classes)) / np.sqrt(dim)).astype(np.float32)
    bias = np.full((classes,), -4.0, np.float32)
    if positives_per_row is None:
        return features, kernel, bias, rng.uniform(size=(batch, classes)) < 0.01, None
    # Zipf-like class frequencies, as in extreme multi-label data sets.
    weights = 1.0 / np.arange(1, classes + 1)
    picks = rng.choice(classes, size=(batch, positives_per_row), p=weights / weights.sum())
    picks[:, positives_per_row // 2 :][rng.uniform(size=(batch, positives_per_row - positives_per_row // 2)) < 0.5] = -1
    return features, kernel, bias, None, picks.astype(np.int32)


def _forms(sparse: bool):
    """name -> loss(features, kernel, bias, targets); targets are the positives for the sparse fused form and
    dense bool labels otherwise."""

    def fused(f, k, b, targets):
        if sparse:
            return jaxbce.linear_binary_cross_entropy(f, k, positives=targets, bias=b)
        return jaxbce.linear_binary_cross_entropy(f, k, targets, bias=b)

    def materialised(f, k, b, labels):
        return jaxbce.binary_cross_entropy_with_logits(f @ k + b, labels)

    def optax_form(f, k, b, labels):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(f @ k + b, labels.astype(jnp.float32)))

    def floor(f, k, b, labels):
        return jnp.sum(f @ k + b)

    return {"fused": fused, "jaxbce": materialised, "optax": optax_form, "matmul floor": floor}


def _dense_of(positives, classes):
    rows = jnp.broadcast_to(jnp.arange(positives.shape[0])[:, None], positives.shape)
    index = jnp.where(positives >= 0, positives, classes)
    return jnp.zeros((positives.shape[0], classes), jnp.bool_).at[rows, index].set(True, mode="drop")


def run(shapes, repeats: int) -> list[dict]:
    rows = []
    for batch, dim, classes, positives_per_row in shapes:
        features, kernel, bias, labels, positives = _inputs(batch, dim, classes, positives_per_row)
        dense = None if positives is None else _dense_of(jnp.asarray(positives), classes)
        args = (jnp.asarray(features), jnp.asarray(kernel), jnp.asarray(bias))
        row = {"batch": batch, "dim": dim, "classes": classes, "positives_per_row": positives_per_row, "forms": {}}
        for name, loss in _forms(sparse=positives is not None).items():
            targets = jnp.asarray(positives if name == "fused" and positives is not None else
                                  (labels if positives is None else dense))  # fmt: skip
            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            compiled = step.lower(*args, targets).compile()
            entry = measure.memory(compiled)
            if entry["total_bytes"] < RUN_LIMIT_BYTES:
                entry["seconds"] = measure.median_seconds(compiled, (*args, targets), repeats)
            row["forms"][name] = entry
            del compiled
            print(batch, dim, classes, positives_per_row, name, entry, flush=True)
        fused = row["forms"]["fused"]
        ratios = {
            "fused temp / (argument + output)": fused["temp_bytes"] / (fused["argument_bytes"] + fused["output_bytes"]),
            "jaxbce total / fused total": row["forms"]["jaxbce"]["total_bytes"] / fused["total_bytes"],
            "optax total / fused total": row["forms"]["optax"]["total_bytes"] / fused["total_bytes"],
        }
        for peer in ("jaxbce", "optax", "matmul floor"):
            if "seconds" in fused and "seconds" in row["forms"][peer]:
                ratios[f"fused time / {peer} time"] = fused["seconds"] / row["forms"][peer]["seconds"]
        row["ratios"] = ratios
        print(json.dumps(ratios, indent=1), flush=True)
        rows.append(row)
    return rows


# (batch, D, C, P) of the classifier-update rows: sparse positives, Adam.
UPDATE_SHAPES = [(256, 128, 2**18, 32), (256, 128, 2**20, 32), (1024, 128, 2**22, 32), (1024, 128, 2**23, 32)]
# The update rows run up to a larger step (the fused loss then Adam at 1024 x 128 x 2^22: 8.1 GiB), one form at
# a time, freeing each form's parameters and state before the next.
UPDATE_RUN_LIMIT_BYTES = 9 * 2**30
BFLOAT16_UPDATE = "fused update, bfloat16, stochastic rounding"


def _update_forms(optimizer):
    """name -> (train step of the classifier (features, params, opt_state, positives) -> (loss, features gradient,
    params, opt_state), jitted with params and opt_state donated; the head's dtype)."""

    def fused_update(features, params, state, positives, key=None):
        return jaxbce.linear_binary_cross_entropy_update(
            features, params, state, positives=positives, optimizer=optimizer, key=key
        )

    def fused_loss_then_adam(features, params, state, positives):
        def loss(features, params):
            kernel, bias = params["kernel"], params["bias"]
            return jaxbce.linear_binary_cross_entropy(features, kernel, positives=positives, bias=bias)

        value, (features_grad, grads) = jax.value_and_grad(loss, argnums=(0, 1))(features, params)
        updates, state = optimizer.update(grads, state, params)
        return value, features_grad, optax.apply_updates(params, updates), state

    def bfloat16_update(features, params, state, positives):
        return fused_update(features, params, state, positives, jax.random.key(0))

    forms = {
        "fused update": (fused_update, jnp.float32),
        "fused loss, then optax.adam": (fused_loss_then_adam, jnp.float32),
        BFLOAT16_UPDATE: (bfloat16_update, jnp.bfloat16),
    }
    return {name: (jax.jit(form, donate_argnums=(1, 2)), dtype) for name, (form, dtype) in forms.items()}


def run_update(shapes, repeats: int) -> list[dict]:
    """Memory (compiled, donated: arguments + outputs not aliased to them + temporaries) and time per step of the
    classifier's Adam step, fused into the chunk loop or after the fused loss; and the fused one with a bfloat16
    head and Adam state, rounded stochastically."""
    optimizer = optax.adam(1e-3)
    rows = []
    for batch, dim, classes, positives_per_row in shapes:
        features = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
        positives = jax.ShapeDtypeStruct((batch, positives_per_row), jnp.int32)
        row = {"batch": batch, "dim": dim, "classes": classes, "positives_per_row": positives_per_row, "forms": {}}
        for name, (step, dtype) in _update_forms(optimizer).items():
            params = {
                "kernel": jax.ShapeDtypeStruct((dim, classes), dtype),
                "bias": jax.ShapeDtypeStruct((classes,), dtype),
            }
            compiled = step.lower(features, params, jax.eval_shape(optimizer.init, params), positives).compile()
            analysis = compiled.memory_analysis()
            entry = measure.memory(compiled)
            entry["aliased_bytes"] = int(analysis.alias_size_in_bytes)
            entry["step_bytes"] = entry["total_bytes"] - entry["aliased_bytes"]
            if entry["step_bytes"] < UPDATE_RUN_LIMIT_BYTES:
                f, kernel, bias, _, picks = _inputs(batch, dim, classes, positives_per_row)
                f, picks = jnp.asarray(f), jnp.asarray(picks)
                head = {"kernel": jnp.asarray(kernel, dtype), "bias": jnp.asarray(bias, dtype)}
                del kernel, bias
                # Consecutive steps, each taking the parameters and state the last one returned (they are donated).
                _, _, head, opt_state = jax.block_until_ready(compiled(f, head, optimizer.init(head), picks))
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    _, _, head, opt_state = jax.block_until_ready(compiled(f, head, opt_state, picks))
                    times.append(time.perf_counter() - start)
                entry["seconds"] = float(np.median(times))
                del head, opt_state
            row["forms"][name] = entry
            del compiled
            print(batch, dim, classes, name, entry, flush=True)
        forms = row["forms"]
        fused, separate, bfloat16 = forms["fused update"], forms["fused loss, then optax.adam"], forms[BFLOAT16_UPDATE]
        row["ratios"] = {
            "fused update step bytes / separate step bytes": fused["step_bytes"] / separate["step_bytes"],
            "fused update temp / kernel bytes": fused["temp_bytes"] / (dim * classes * 4),
            "bfloat16 fused update step bytes / fused update step bytes": bfloat16["step_bytes"] / fused["step_bytes"],
        }
        if "seconds" in fused and "seconds" in separate:
            row["ratios"]["fused update time / separate time"] = fused["seconds"] / separate["seconds"]
        if "seconds" in fused and "seconds" in bfloat16:
            row["ratios"]["bfloat16 fused update time / fused update time"] = bfloat16["seconds"] / fused["seconds"]
        print(json.dumps(row["ratios"]), flush=True)
        rows.append(row)
    return rows


# (name, C): the label counts of the Extreme Classification Repository's data sets, a power of two, the nearest
# power-of-two-friendly count to Amazon-670K's, and a prime.
LABEL_SETS = [
    ("EURLex-4K", 3993), ("AmazonCat-13K", 13330), ("Wiki10-31K", 30938), ("LF-AmazonTitles-131K", 131073),
    ("WikiLSHTC-325K", 325056), ("Wiki-500K", 501070), ("5 x 2^17", 655360), ("Amazon-670K", 670091),
    ("2^21", 2**21), ("Amazon-3M", 2812281), ("a prime", 1000003),
]  # fmt: skip
LABEL_SET_BATCH, LABEL_SET_DIM = 1024, 128


def _bcoo_of(positives, classes):
    """The entries of padded ``positives`` as a BCOO ``(B, C)`` (a repeated class once, as positives count it)."""
    from jax.experimental import sparse

    rows, slots = np.nonzero(positives >= 0)
    pairs = np.unique(np.stack([rows, positives[rows, slots]], axis=1), axis=0)
    return sparse.BCOO(
        (jnp.ones(len(pairs), jnp.float32), jnp.asarray(pairs, jnp.int32)), shape=(len(positives), classes)
    )


def run_label_sets(repeats: int) -> dict:
    """Compiled temporaries at every count of ``LABEL_SETS`` (both layouts), step times at 655,360 and 670,091, and
    BCOO labels against padded positives at 670,091."""
    optimizer = optax.adam(1e-3)
    batch, dim = LABEL_SET_BATCH, LABEL_SET_DIM
    features = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    positives = jax.ShapeDtypeStruct((batch, 8), jnp.int32)

    def steps(layout):
        def update(f, params, state, positives):
            return jaxbce.linear_binary_cross_entropy_update(
                f, params, state, positives=positives, optimizer=optimizer, kernel_layout=layout
            )

        def gradient(f, params, positives):
            def loss(f, params):
                kernel, bias = params["kernel"], params["bias"]
                return jaxbce.linear_binary_cross_entropy(
                    f, kernel, positives=positives, bias=bias, kernel_layout=layout
                )

            return jax.value_and_grad(loss, argnums=(0, 1))(f, params)

        return jax.jit(update, donate_argnums=(1, 2)), jax.jit(gradient)

    memory = []
    for name, classes in LABEL_SETS:
        row = {"name": name, "classes": classes, "kernel_bytes": dim * classes * 4}
        for layout, shape in (("in_out", (dim, classes)), ("out_in", (classes, dim))):
            params = {
                "kernel": jax.ShapeDtypeStruct(shape, jnp.float32),
                "bias": jax.ShapeDtypeStruct((classes,), jnp.float32),
            }
            update, gradient = steps(layout)
            state = jax.eval_shape(optimizer.init, params)
            row[f"update temp bytes, {layout}"] = measure.memory(
                update.lower(features, params, state, positives).compile()
            )["temp_bytes"]
            row[f"gradient temp bytes, {layout}"] = measure.memory(
                gradient.lower(features, params, positives).compile()
            )["temp_bytes"]
        budget = 2**26 + 0.02 * row["kernel_bytes"]  # the target: 64 MiB + 2% of the kernel
        row["ratios"] = {
            "update temp / kernel bytes": row["update temp bytes, in_out"] / row["kernel_bytes"],
            "gradient temp / kernel bytes": row["gradient temp bytes, in_out"] / row["kernel_bytes"],
            "update temp / (64 MiB + 2% of the kernel)": row["update temp bytes, in_out"] / budget,
            "gradient temp / (64 MiB + 2% of the kernel)": row["gradient temp bytes, in_out"] / budget,
            "out_in update temp / in_out": row["update temp bytes, out_in"] / row["update temp bytes, in_out"],
            "out_in gradient temp / in_out": row["gradient temp bytes, out_in"] / row["gradient temp bytes, in_out"],
        }  # fmt: skip
        print(name, classes, json.dumps(row["ratios"]), flush=True)
        memory.append(row)

    # Step time per class: the fused Adam step, alternating between the two counts so that both see the same load.
    update, gradient = steps("in_out")
    runs = {}
    for classes in (655360, 670091):
        f, kernel, bias, _, picks = _inputs(batch, dim, classes, 8)
        params = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}
        runs[classes] = [jnp.asarray(f), params, optimizer.init(params), jnp.asarray(picks), []]
        del kernel, bias
    for _ in range(repeats + 1):
        for run in runs.values():
            f, params, state, picks, times = run
            start = time.perf_counter()
            _, _, run[1], run[2] = jax.block_until_ready(update(f, params, state, picks))
            times.append(time.perf_counter() - start)
    step_seconds = {classes: float(np.median(run[4][1:])) for classes, run in runs.items()}  # the first: warm-up

    # BCOO against padded positives with the same entries, at Amazon-670K's count (about 5.4 labels per example).
    classes = 670091
    f, kernel, bias, _, picks = _inputs(batch, dim, classes, 11, seed=1)
    labels = _bcoo_of(picks, classes)
    params = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}
    del kernel, bias

    def sparse_gradient(f, params, labels):
        def loss(f, params):
            return jaxbce.linear_binary_cross_entropy(f, params["kernel"], labels, bias=params["bias"])

        return jax.value_and_grad(loss, argnums=(0, 1))(f, params)

    forms = {
        "positives": (gradient.lower(jnp.asarray(f), params, jnp.asarray(picks)).compile(), jnp.asarray(picks)),
        "bcoo": (jax.jit(sparse_gradient).lower(jnp.asarray(f), params, labels).compile(), labels),
    }
    sparse_seconds = {name: [] for name in forms}
    for _ in range(repeats + 1):
        for name, (compiled, targets) in forms.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(jnp.asarray(f), params, targets))
            sparse_seconds[name].append(time.perf_counter() - start)
    sparse_seconds = {name: float(np.median(times[1:])) for name, times in sparse_seconds.items()}
    timing = {
        "update seconds per step": {str(c): s for c, s in step_seconds.items()},
        "labels per example": float(labels.nse / batch),
        "gradient seconds, positives vs bcoo": sparse_seconds,
        "ratios": {
            "update time per class, 670091 / 655360": (step_seconds[670091] / 670091) / (step_seconds[655360] / 655360),
            "bcoo gradient time / positives gradient time": sparse_seconds["bcoo"] / sparse_seconds["positives"],
        },
    }
    print(json.dumps(timing, indent=1), flush=True)
    return {"batch": batch, "dim": dim, "optimizer": "adam", "memory": memory, "timing": timing}


# The sigmoid family fused (``--family-only``): the shape, sparse positives.
FAMILY_SHAPE = (1024, 128, 2**20, 32)
FAMILY = {
    "bce": (jaxbce.linear_binary_cross_entropy, jaxbce.binary_cross_entropy_with_logits),
    "focal": (jaxbce.linear_sigmoid_focal_loss, jaxbce.sigmoid_focal_loss),
    "asymmetric": (jaxbce.linear_asymmetric_loss, jaxbce.asymmetric_loss),
}
# linear_top_k against lax.top_k of the materialised logits, at a size where those fit.
TOP_K_SHAPE, TOP_K = (1024, 128, 2**18), 5


def run_family(repeats: int) -> dict:
    """The fused focal and ASL losses (and the BCE) at ``FAMILY_SHAPE``: compiled temporaries of the gradient
    against the materialised logits' size and the materialised form's own, time against the fused BCE's; the
    donated Adam step of ``linear_update`` against the fused loss's gradient followed by ``optax.adam``; and
    ``linear_top_k`` against ``lax.top_k`` of the materialised logits (memory and time)."""
    batch, dim, classes, per_row = FAMILY_SHAPE
    features, kernel, bias, _, positives = _inputs(batch, dim, classes, per_row)
    logits_bytes = batch * classes * 4
    optimizer = optax.adam(1e-3)
    params = {"kernel": kernel, "bias": bias}
    rows = {}
    for name, (fused, elementwise) in FAMILY.items():

        def loss(f, params, positives, fused=fused):
            return fused(f, params["kernel"], positives=positives, bias=params["bias"])

        def materialised(f, params, positives, elementwise=elementwise):
            return elementwise(f @ params["kernel"] + params["bias"], _dense_of(positives, classes))

        def separate(f, params, state, positives, loss=loss):
            value, (d_features, grads) = jax.value_and_grad(loss, argnums=(0, 1))(f, params, positives)
            updates, state = optimizer.update(grads, state, params)
            return value, d_features, optax.apply_updates(params, updates), state

        def fused_step(f, params, state, positives, fused=fused):
            return jaxbce.linear_update(fused, f, params, state, positives=positives, optimizer=optimizer)

        gradient = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(features, params, positives).compile()
        dense = jax.jit(jax.value_and_grad(materialised, argnums=(0, 1))).lower(features, params, positives).compile()
        state = jax.eval_shape(optimizer.init, params)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
        steps = {
            step_name: measure.memory(
                jax.jit(step, donate_argnums=(1, 2)).lower(features, abstract, state, positives).compile()
            )
            for step_name, step in (("fused update", fused_step), ("fused loss, then optax", separate))
        }
        rows[name] = {
            "gradient": measure.memory(gradient),
            "materialised gradient": measure.memory(dense),
            "seconds": measure.median_seconds(gradient, (features, params, positives), repeats),
            "update": steps,
        }
        print(name, json.dumps({k: v for k, v in rows[name].items() if k != "update"}), flush=True)
    ratios = {}
    for name, row in rows.items():
        ratios[f"{name}: gradient temp / materialised logits"] = row["gradient"]["temp_bytes"] / logits_bytes
        ratios[f"{name}: materialised temp / fused temp"] = (
            row["materialised gradient"]["temp_bytes"] / row["gradient"]["temp_bytes"]
        )
        ratios[f"{name}: time / fused bce time"] = row["seconds"] / rows["bce"]["seconds"]
        ratios[f"{name}: update temp / (fused loss, then optax) temp"] = (
            row["update"]["fused update"]["temp_bytes"] / row["update"]["fused loss, then optax"]["temp_bytes"]
        )

    batch, dim, classes = TOP_K_SHAPE
    features, kernel, bias, _, _ = _inputs(batch, dim, classes, 1)
    fused_top = jax.jit(lambda f, k, b: jaxbce.linear_top_k(f, k, TOP_K, bias=b)).lower(features, kernel, bias)
    dense_top = jax.jit(lambda f, k, b: jax.lax.top_k(f @ k + b, TOP_K)).lower(features, kernel, bias)
    fused_top, dense_top = fused_top.compile(), dense_top.compile()
    top_k = {
        "shape": [batch, dim, classes, TOP_K],
        "linear_top_k": measure.memory(fused_top),
        "materialised + lax.top_k": measure.memory(dense_top),
        "chunk logits bytes": batch * 2048 * 4,  # the default chunk of 2^21 logits / 1024 rows
    }
    # Alternated, so that both see the same machine state.
    times = {"linear_top_k": [], "materialised + lax.top_k": []}
    for _ in range(repeats):
        times["linear_top_k"].append(measure.median_seconds(fused_top, (features, kernel, bias), 1))
        times["materialised + lax.top_k"].append(measure.median_seconds(dense_top, (features, kernel, bias), 1))
    top_k["seconds"] = {name: float(np.median(values)) for name, values in times.items()}
    ratios["linear_top_k temp / chunk logits"] = top_k["linear_top_k"]["temp_bytes"] / top_k["chunk logits bytes"]
    ratios["linear_top_k time / (materialised + lax.top_k)"] = (
        top_k["seconds"]["linear_top_k"] / top_k["seconds"]["materialised + lax.top_k"]
    )
    print(json.dumps(ratios, indent=1), flush=True)
    return {"shape": list(FAMILY_SHAPE), "losses": rows, "top_k": top_k, "ratios": ratios}


def plot(rows, path):
    with measure.figure(path, 2, (11, 4), dpi=120) as (memory_axis, time_axis):
        labels = [
            f"{r['batch']}x{r['dim']}x2^{int(np.log2(r['classes']))}" + (" sparse" if r["positives_per_row"] else "")
            for r in rows
        ]
        positions = np.arange(len(rows))
        names = ("fused", "jaxbce", "optax", "matmul floor")
        for offset, name in enumerate(names):
            memory = [r["forms"][name]["total_bytes"] / 2**30 for r in rows]
            memory_axis.bar(positions + 0.2 * offset, memory, width=0.2, label=name)
            seconds = [r["forms"][name].get("seconds", np.nan) for r in rows]
            time_axis.bar(positions + 0.2 * offset, seconds, width=0.2, label=name)
        for axis, title in ((memory_axis, "peak bytes of value_and_grad (GiB)"), (time_axis, "seconds per step")):
            axis.set_xticks(positions + 0.3, labels, rotation=30, ha="right", fontsize=8)
            axis.set_yscale("log")
            axis.set_title(title)
        memory_axis.legend(fontsize=8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the two smallest shapes, few repeats (smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--update-only", action="store_true", help="rerun only the classifier-update rows")
    parser.add_argument("--label-sets-only", action="store_true", help="rerun only the real label sets' rows")
    parser.add_argument("--family-only", action="store_true", help="rerun only the fused focal, ASL and top-k rows")
    parser.add_argument("--rows", help="comma-separated indices into SHAPES: rerun only these rows and replace "
                        "them in the existing JSON (e.g. after a run disturbed by other work)")  # fmt: skip
    args = parser.parse_args()
    backend = jax.default_backend()
    out = ROOT / "bench" / "results" / f"fused-{backend}{'-quick' if args.quick else ''}.json"
    # A part rerun alone replaces its entry in the existing JSON.
    for only, part, run_part in (
        (args.family_only, "family", run_family),
        (args.label_sets_only, "label_sets", run_label_sets),
    ):
        if only:
            result = json.loads(out.read_text())
            result[part] = run_part(repeats=args.repeats)
            out.write_text(json.dumps(result, indent=1) + "\n")
            print("wrote", out)
            return
    update_rows = None if args.update_only else run_update(UPDATE_SHAPES[:1] if args.quick else UPDATE_SHAPES, 3)
    if args.update_only:
        rows = json.loads(out.read_text())["rows"]
        update_rows = run_update(UPDATE_SHAPES, 3)
    elif args.rows:
        indices = [int(i) for i in args.rows.split(",")]
        rows = json.loads(out.read_text())["rows"]
        for index, row in zip(indices, run([SHAPES[i] for i in indices], repeats=args.repeats), strict=True):
            rows[index] = row
    else:
        rows = run(SHAPES[:2] if args.quick else SHAPES, repeats=2 if args.quick else args.repeats)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {backend}, {jax.device_count()} device(s)",
        "versions": {"jax": jax.__version__, "optax": optax.__version__},
        "rows": rows,
        "update_rows": update_rows,
        "label_sets": None if args.quick else run_label_sets(repeats=args.repeats),
        "family": None if args.quick else run_family(repeats=args.repeats),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"))
    print("wrote", out)


if __name__ == "__main__":
    main()
