"""Speed of jaxbce against its peers and against the memory floor, side by side in one process.

    python bench/speed.py [--max-log2 24] [--quick]     # or: make bench-speed

For N = 2**10 ... 2**max_log2 elements and three input cases (float32 logits with float32 labels, with bool
labels, and bfloat16 logits with bool labels), on the same arrays:

* forward: the mean loss; value_and_grad: ``jax.jit(jax.value_and_grad(mean loss))`` (for torch: forward and
  ``backward()``), for jaxbce, optax (+ mean), the textbook formula, Keras (JAX backend) and torch when installed;
* floor kernels that read the same inputs and write the same outputs with no transcendental work: forward
  ``sum(x * y)``, value_and_grad ``(sum(x * y), x - y)``.

Fixed costs: one jitted call (forward and value_and_grad) of every registered loss at N = 1,024, against the
textbook BCE and optax's BCE and focal loss, in interleaved rounds (median of the rounds' medians). Every loss
at the largest N: each registered loss's forward and value_and_grad (bool labels; the BCE from probabilities
also with float32 labels, which keep the exact sum), with the arrays of N floats each compiled program writes.

Each time is the median of repeated runs after warm-up; below 64 MiB of inputs several input sets are rotated so
that the caches do not hold them. Writes ``bench/results/speed-<backend>.json`` and ``.png`` (ns per element
against N, log-log) and prints ratios against the floor and against each peer at the largest N, with the
compiled evidence of how many passes jaxbce's forward and value_and_grad make over the inputs.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
# The fixed costs are measured again in a child process pinned to one core before JAX starts its threads: on
# several cores they include XLA:CPU's hand-off of a loop split in two tasks to a second thread.
ONE_CORE = "--fixed-costs-on-one-core"
if ONE_CORE in sys.argv:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples")]

from measure import figure  # noqa: E402  (bench/measure.py, beside this script)

import jaxbce  # noqa: E402
from common import optional, textbook_bce  # noqa: E402
from jaxbce._arguments import Role  # noqa: E402
from loss_table import LOSSES  # noqa: E402  (tests/loss_table.py: roles of each loss's arguments)

CASES = {
    "float32 + float32 labels": (jnp.float32, jnp.float32),
    "float32 + bool labels": (jnp.float32, jnp.bool_),
    "bfloat16 + bool labels": (jnp.bfloat16, jnp.bool_),
}


optax, torch, keras = optional("optax"), optional("torch"), optional("keras")
if keras is not None and keras.backend.backend() != "jax":
    keras = None


def jax_losses():
    """name -> mean loss of (logits, labels), as a JAX function."""
    losses = {
        "jaxbce": lambda x, y: jaxbce.binary_cross_entropy_with_logits(x, y),
        "textbook": lambda x, y: jnp.mean(textbook_bce(x.astype(jnp.float32), y)),
        "floor": lambda x, y: jnp.sum(x * y.astype(x.dtype)),
    }
    if optax is not None:
        losses["optax"] = lambda x, y: jnp.mean(optax.sigmoid_binary_cross_entropy(x, y.astype(x.dtype)))
    if keras is not None:
        losses["keras"] = lambda x, y: jnp.mean(
            keras.losses.binary_crossentropy(y.astype(x.dtype)[:, None], x[:, None], from_logits=True)
        )
    return losses


def floor_value_and_grad(x, y):
    return jnp.sum(x * y.astype(x.dtype)), x - y.astype(x.dtype)


def _median_ns(run, inputs, n):
    run(*inputs[0])  # compile
    for args in inputs[:2]:
        jax.block_until_ready(run(*args))
    times, budget, start = [], 0.25, time.perf_counter()
    while len(times) < 11 or (time.perf_counter() - start < budget and len(times) < 200):
        args = inputs[len(times) % len(inputs)]
        t0 = time.perf_counter()
        jax.block_until_ready(run(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / n * 1e9


def _inputs(n, logits_dtype, labels_dtype, sets):
    rng = np.random.default_rng(n)
    out = []
    for _ in range(sets):
        x = rng.normal(scale=4.0, size=n).astype(np.float32)
        y = rng.uniform(size=n) > 0.5
        out.append((jnp.asarray(x, logits_dtype), jnp.asarray(y, labels_dtype)))
    return out


def _torch_runs(inputs):
    """torch forward and forward + backward on copies of the float32 inputs (torch takes float labels only)."""
    torch_inputs = [
        (torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.float32))) for x, y in inputs
    ]

    def forward(x, y):
        with torch.no_grad():
            return torch.nn.functional.binary_cross_entropy_with_logits(x, y)

    def value_and_grad(x, y):
        x = x.detach().requires_grad_()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x, y)
        loss.backward()
        return loss, x.grad

    return (lambda x, y: forward(x, y).item()), (lambda x, y: value_and_grad(x, y)[1].sum().item()), torch_inputs


def measure(max_log2, quick):
    results = {}
    sizes = [2**k for k in range(10, max_log2 + 1, 2 if quick else 1)]
    for case, (logits_dtype, labels_dtype) in CASES.items():
        rows = results.setdefault(case, {})
        for n in sizes:
            bytes_per_set = n * (jnp.dtype(logits_dtype).itemsize + jnp.dtype(labels_dtype).itemsize)
            sets = int(max(1, min(8, (64 << 20) // bytes_per_set)))
            inputs = _inputs(n, logits_dtype, labels_dtype, sets)
            row = {}
            for name, loss in jax_losses().items():
                row[f"{name} forward"] = _median_ns(jax.jit(loss), inputs, n)
                value_and_grad = floor_value_and_grad if name == "floor" else jax.value_and_grad(loss)
                row[f"{name} value_and_grad"] = _median_ns(jax.jit(value_and_grad), inputs, n)
            if torch is not None and labels_dtype == jnp.float32 and logits_dtype == jnp.float32:
                forward, value_and_grad, torch_inputs = _torch_runs(inputs)
                row["torch forward"] = _median_ns(forward, torch_inputs, n)
                row["torch value_and_grad"] = _median_ns(value_and_grad, torch_inputs, n)
            rows[str(n)] = row
            print(f"{case:<26} N=2^{int(np.log2(n)):<3}" + "".join(f" {k}={v:.3g}" for k, v in row.items()))
    return results


def compiled_evidence(n=1 << 20):
    """The optimized HLO of jaxbce's forward and value_and_grad (float32 logits, bool labels): the fusions of the
    entry computation, which of them write an array of N floats, and the compiled memory."""
    x, y = jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.bool_)
    loss = jaxbce.binary_cross_entropy_with_logits
    out = {"n": n, "labels": "bool"}
    for mode, function in (("forward", loss), ("value_and_grad", jax.value_and_grad(loss))):
        compiled = jax.jit(function).lower(x, y).compile()
        text = compiled.as_text()
        entry = text[text.index("ENTRY") :]
        memory = compiled.memory_analysis()
        out[mode] = {
            "fusions": re.findall(r"%(\S+) = \S+ fusion\(", entry),
            "writes_n_floats": re.findall(rf"%(\S+) = f32\[{n}\]\{{0\}} fusion\(", entry),
            "temp_bytes_incl_fallback_branch": memory.temp_size_in_bytes,
        }
    return out


def _loss_inputs(n, labels_dtype):
    """Arrays of n elements for every registered loss's positional arguments, by role: logits, probabilities,
    labels of ``labels_dtype``, and other logits for the KL divergence's targets."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(scale=4.0, size=n), jnp.float32)
    by_role = {
        Role.LOGITS: [x, jnp.asarray(rng.normal(scale=4.0, size=n), jnp.float32)],
        Role.PROBABILITIES: [jax.nn.sigmoid(x)],
        Role.LABELS: [jnp.asarray(rng.uniform(size=n) > 0.5, labels_dtype)],
    }
    functions = {}
    for name, entry in LOSSES.items():
        taken = {role: 0 for role in by_role}
        args = []
        for arg in entry.positional:
            role = dict(entry.arrays)[arg]
            args.append(by_role[role][taken[role]])
            taken[role] += 1
        functions[f"jaxbce.{name}"] = (entry.function, args)
    return functions


def _interleaved_medians(functions, rounds, calls):
    """Seconds per call of the forward and the value_and_grad of each function, the median over rounds (each
    function's median of ``calls`` calls, all functions in turn in every round)."""
    runs = {}
    for name, (function, args) in functions.items():
        runs[f"{name} forward"] = (jax.jit(function), args)
        runs[f"{name} value_and_grad"] = (jax.jit(jax.value_and_grad(function)), args)
    for run, args in runs.values():
        jax.block_until_ready(run(*args))
    medians = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (run, args) in runs.items():
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                jax.block_until_ready(run(*args))
                times.append(time.perf_counter() - start)
            medians[name].append(np.median(times))
    return {name: float(np.median(m)) for name, m in medians.items()}


def fixed_costs(n=1024, rounds=15, calls=100):
    """Microseconds per jitted call at N = n (float32 logits and labels): every registered loss (forward and
    value_and_grad of its default mean), the textbook BCE and optax's BCE and focal loss."""
    functions = _loss_inputs(n, jnp.float32)
    x, y = functions["jaxbce.binary_cross_entropy_with_logits"][1]
    functions["textbook BCE"] = (lambda x, y: jnp.mean(textbook_bce(x, y)), [x, y])
    if optax is not None:
        functions["optax BCE"] = (lambda x, y: jnp.mean(optax.sigmoid_binary_cross_entropy(x, y)), [x, y])
        functions["optax focal"] = (lambda x, y: jnp.mean(optax.sigmoid_focal_loss(x, y)), [x, y])
    seconds = _interleaved_medians(functions, rounds, calls)
    return {"n": n, "microseconds": {name: value * 1e6 for name, value in seconds.items()}}


def every_loss(n, rounds=7, calls=3):
    """ns per element of every registered loss's default mean at N = n (float32 first argument, bool labels),
    forward and value_and_grad in interleaved rounds, with the arrays of N floats that each compiled program
    writes (none for a forward that is one pass over the inputs)."""
    functions = _loss_inputs(n, jnp.bool_)
    # Float labels may be soft: the BCE from probabilities then sums its exact terms.
    p, y = functions["jaxbce.binary_cross_entropy"][1]
    functions["jaxbce.binary_cross_entropy, float32 labels"] = (LOSSES["binary_cross_entropy"].function, [p, 1.0 * y])
    seconds = _interleaved_medians(functions, rounds, calls)
    writes = {}
    for name, (function, args) in functions.items():
        for mode, run in (("forward", function), ("value_and_grad", jax.value_and_grad(function))):
            text = jax.jit(run).lower(*args).compile().as_text()
            writes[f"{name} {mode}"] = len(
                re.findall(rf"%\S+ = f32\[{n}\]\{{0\}} fusion\(", text[text.index("ENTRY") :])
            )
    return {
        "n": n,
        "labels": "bool",
        "ns_per_element": {name: value / n * 1e9 for name, value in seconds.items()},
        "writes_n_floats": writes,
    }


def ratios(results):
    """At the largest N of each case: jaxbce against the floor and each peer (peer time / jaxbce time)."""
    out = {}
    for case, rows in results.items():
        n = max(rows, key=int)
        row = rows[n]
        entry = {"n": int(n)}
        for mode in ("forward", "value_and_grad"):
            ours = row[f"jaxbce {mode}"]
            entry[f"{mode}: jaxbce / floor"] = ours / row[f"floor {mode}"]
            for peer in ("optax", "textbook", "keras", "torch"):
                if f"{peer} {mode}" in row:
                    entry[f"{mode}: {peer} / jaxbce"] = row[f"{peer} {mode}"] / ours
        out[case] = entry
    return out


def plot(results, path):
    with figure(path, 2, (12, 4.5), sharey=True) as axes:
        rows = results["float32 + float32 labels"]
        sizes = sorted(rows, key=int)
        for ax, mode in zip(axes, ("forward", "value_and_grad"), strict=True):
            for name in ("jaxbce", "optax", "textbook", "keras", "torch", "floor"):
                key = f"{name} {mode}"
                if key in rows[sizes[0]]:
                    style = {"color": "k", "linestyle": "--"} if name == "floor" else {"marker": "o", "markersize": 3}
                    ax.plot([int(n) for n in sizes], [rows[n][key] for n in sizes], label=name, **style)
            ax.set(xscale="log", yscale="log", xlabel="N (elements)", title=f"{mode}, float32 logits and labels")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("ns per element (median)")
        axes[1].legend()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-log2", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="every other size")
    parser.add_argument(ONE_CORE, action="store_true", help="print the fixed costs on one core, as JSON")
    args = parser.parse_args()
    if args.fixed_costs_on_one_core:
        print(json.dumps(fixed_costs()))
        return
    one_core = subprocess.run([sys.executable, __file__, ONE_CORE], capture_output=True, text=True, check=True)
    backend = jax.default_backend()
    results = measure(args.max_log2, args.quick)
    report = {
        "date": datetime.date.today().isoformat(),
        "backend": backend,
        "device": str(jax.devices()[0].device_kind),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "versions": {"jax": jax.__version__, **{m.__name__: m.__version__ for m in (optax, torch, keras) if m}},
        "ns_per_element": results,
        "ratios_at_largest_n": ratios(results),
        "compiled": compiled_evidence(),
        "fixed_costs": fixed_costs(),
        "fixed_costs_one_core": json.loads(one_core.stdout.splitlines()[-1]),
        "every_loss": every_loss(1 << args.max_log2),
    }
    out = ROOT / "bench" / "results" / f"speed-{backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print("\nratios at the largest N (floor: jaxbce time / floor time; peers: peer time / jaxbce time)")
    for case, entry in report["ratios_at_largest_n"].items():
        print(f"  {case} (N={entry['n']}): " + ", ".join(f"{k} {v:.2f}" for k, v in entry.items() if k != "n"))
    print("compiled:", report["compiled"])
    for key in ("fixed_costs", "fixed_costs_one_core"):
        costs = report[key]["microseconds"]
        for mode in ("forward", "value_and_grad"):
            textbook = costs[f"textbook BCE {mode}"]
            print(f"{key} at N=1024, {mode} (us; / textbook BCE):")
            for name, value in costs.items():
                if name.endswith(mode):
                    print(f"  {name:<55} {value:7.1f}  {value / textbook:.2f}")
    every = report["every_loss"]
    print(f"every loss at N={every['n']} (ns/element; arrays of N floats written):")
    for name, value in every["ns_per_element"].items():
        print(f"  {name:<55} {value:6.2f}  {every['writes_n_floats'][name]}")
    print(f"wrote {out.relative_to(ROOT)} and {out.with_suffix('.png').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
