"""Accuracy of jaxbce and its peers in float32, in eps, against a 50-digit mpmath reference.

    python bench/accuracy.py            # or: make bench-accuracy

For each function, every implementation that is installed (jaxbce, optax, the textbook formula, Keras on the
JAX backend, PyTorch, torchvision) is evaluated on the same float32 inputs: logits over [-1e4, 1e4] (dense
near 0 and through both tails) and the labels {0, 1, 1e-3, 0.05, 0.3, 0.5, 0.7, 0.95, 1 - 1e-3}. Reported:
the largest error of the loss (relative), of the logits gradient for hard labels (relative) and for soft labels
(relative to max(|grad|, sigmoid(x), |y|), as the contract measures it), and the number of non-finite results
where the reference is finite. Errors below the smallest normal number are not counted. Prints a table and
writes bench/results/accuracy.json; ``--keep-missing-peers`` keeps the previous file's rows of the peers that are
not installed, and names them.
"""

import datetime
import json
import os
import pathlib
import platform
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxbce  # noqa: E402
import reference  # noqa: E402
import report  # noqa: E402  (bench/report.py, beside this script)
from common import optional, textbook_bce  # noqa: E402
from loss_table import LOSSES  # noqa: E402  (tests/loss_table.py)

LABELS = (0.0, 1.0, 1e-3, 0.05, 0.3, 0.5, 0.7, 0.95, 1 - 1e-3)
F32 = np.float32


optax = optional("optax")
torch = optional("torch")
keras = optional("keras")
torchvision = optional("torchvision") if torch is not None else None
timm = optional("timm.loss") if torchvision is not None else None


def jax_value_and_grad(fn):
    """Elementwise loss and d/dlogits of a JAX function fn(x, y) -> elementwise loss."""

    def run(x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        return np.asarray(fn(x, y)), np.asarray(jax.grad(lambda v: jnp.sum(fn(v, y)))(x))

    return run


def torch_value_and_grad(fn):
    def run(x, y):
        xt = torch.tensor(x, requires_grad=True)
        loss = fn(xt, torch.tensor(y))
        loss.sum().backward()
        return loss.detach().numpy(), xt.grad.numpy()

    return run


def bce_implementations(pos_weight, label_smoothing):
    plain = pos_weight == 1.0 and label_smoothing == 0.0
    pw = jnp.asarray(pos_weight, F32)
    impls = {
        "jaxbce": jax_value_and_grad(
            lambda x, y: jaxbce.binary_cross_entropy_with_logits(
                x, y, pos_weight=None if plain else pw, label_smoothing=label_smoothing, reduction="none"
            )
        )
    }
    if plain:
        impls["textbook"] = jax_value_and_grad(textbook_bce)
        if optax is not None:
            impls["optax"] = jax_value_and_grad(optax.sigmoid_binary_cross_entropy)
    if label_smoothing == 0.0 and torch is not None:
        impls["torch"] = torch_value_and_grad(
            lambda x, y: torch.nn.functional.binary_cross_entropy_with_logits(
                x, y, pos_weight=torch.tensor(pos_weight, dtype=torch.float32), reduction="none"
            )
        )
    if pos_weight == 1.0 and keras is not None and keras.backend.backend() == "jax":
        impls["keras"] = jax_value_and_grad(
            lambda x, y: keras.losses.binary_crossentropy(
                y[:, None], x[:, None], from_logits=True, label_smoothing=label_smoothing
            )
        )
    return impls


def measure(impls, x, y, ref_loss, ref_grad, ref_scale, hard):
    """{name: {"loss", "grad", "nonfinite"}} for each implementation on one set of inputs."""
    rows = {}
    for name, run in impls.items():
        loss, grad = run(x, y)
        rows[name] = {
            "loss": float(reference.eps_error(loss, ref_loss, dtype=F32).max()),
            "grad": float(reference.eps_error(grad, ref_grad, None if hard else ref_scale, dtype=F32).max()),
            "nonfinite": int((~np.isfinite(loss) & np.isfinite(ref_loss)).sum() + (~np.isfinite(grad)).sum()),
        }
    return rows


def accumulate(table, rows, grad_key="grad"):
    """Merge one measurement into a table: the worst error and the total count of non-finite results."""
    for name, row in rows.items():
        entry = table.setdefault(name, {"loss": 0.0, grad_key: 0.0, "nonfinite": 0})
        entry["loss"] = max(entry["loss"], row["loss"])
        entry[grad_key] = max(entry.get(grad_key, 0.0), row["grad"])
        entry["nonfinite"] += row["nonfinite"]


def bce_with_logits_table():
    x = reference.logit_grid(F32)
    results = {}
    for pos_weight, label_smoothing in ((1.0, 0.0), (3.0, 0.0), (1.0, 0.1)):
        table: dict[str, dict[str, float]] = {}
        for label in LABELS:
            y = np.full_like(x, label)
            ref = reference.bce_with_logits(x, y, pos_weight=pos_weight, label_smoothing=label_smoothing)
            hard = label in (0.0, 1.0) and label_smoothing == 0.0
            rows = measure(bce_implementations(pos_weight, label_smoothing), x, y, *ref, hard)
            accumulate(table, rows, "grad_hard" if hard else "grad_soft")
        results[f"pos_weight={pos_weight}, label_smoothing={label_smoothing}"] = table
    return {"points": int(len(x) * len(LABELS)), "settings": results}


FOCAL_GAMMAS = (0.5, 1.7, 2.0, 3.0, 5.0)


def focal_table(alpha, gamma):
    x = reference.logit_grid(F32, dense=801, log_points=600, tail=601)
    impls = {
        "jaxbce": jax_value_and_grad(
            lambda x, y: jaxbce.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="none")
        )
    }
    if optax is not None:
        impls["optax"] = jax_value_and_grad(lambda x, y: optax.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma))
    if torchvision is not None:
        impls["torchvision"] = torch_value_and_grad(
            lambda x, y: torchvision.ops.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma)
        )
    if keras is not None and keras.backend.backend() == "jax":
        impls["keras"] = jax_value_and_grad(
            lambda x, y: keras.losses.binary_focal_crossentropy(
                y[:, None], x[:, None], apply_class_balancing=True, alpha=alpha, gamma=gamma, from_logits=True
            )
        )
    table: dict[str, dict[str, float]] = {}
    for label in (0.0, 1.0, 0.05, 0.3, 0.7):
        y = np.full_like(x, label)
        ref_loss, ref_grad, scale = reference.sigmoid_focal(x, y, alpha=alpha, gamma=gamma)
        accumulate(table, measure(impls, x, y, ref_loss, ref_grad, scale, label in (0.0, 1.0)))
    return table


def entropy_and_kl_table():
    x = reference.logit_grid(F32, dense=801, log_points=600, tail=601)
    ref_h, ref_dh = reference.binary_entropy(x)

    def naive_entropy(x, y):
        p = jax.nn.sigmoid(x)
        return -(p * jnp.log(p) + (1 - p) * jnp.log1p(-p))

    def log_sigmoid_entropy(x, y):
        p = jax.nn.sigmoid(x)
        return -(p * jax.nn.log_sigmoid(x) + (1 - p) * jax.nn.log_sigmoid(-x))

    entropy = measure(
        {
            "jaxbce": jax_value_and_grad(lambda x, y: jaxbce.binary_entropy(x, reduction="none")),
            "naive -p log p": jax_value_and_grad(naive_entropy),
            "log_sigmoid form": jax_value_and_grad(log_sigmoid_entropy),
        },
        x,
        x,
        ref_h,
        ref_dh,
        None,
        True,
    )
    targets = np.array([-30, -5, -1, -0.1, 0, 0.3, 2, 20], F32)
    offsets = np.concatenate([-np.geomspace(1e-6, 1e3, 200), np.geomspace(1e-6, 1e3, 200)])
    xs = (targets[:, None] + offsets[None, :]).astype(F32).ravel()
    ts = np.repeat(targets, len(offsets))
    ref_kl, ref_dx, _ = reference.binary_kl_divergence(xs, ts)

    def textbook_kl(x, t):
        return jax.nn.softplus(x) - jax.nn.softplus(t) - jax.nn.sigmoid(t) * (x - t)

    def log_sigmoid_kl(x, t):
        q = jax.nn.sigmoid(t)
        return q * (jax.nn.log_sigmoid(t) - jax.nn.log_sigmoid(x)) + (1 - q) * (
            jax.nn.log_sigmoid(-t) - jax.nn.log_sigmoid(-x)
        )

    kl = measure(
        {
            "jaxbce": jax_value_and_grad(lambda x, t: jaxbce.binary_kl_divergence(x, t, reduction="none")),
            "textbook softplus form": jax_value_and_grad(textbook_kl),
            "log_sigmoid form": jax_value_and_grad(log_sigmoid_kl),
        },
        xs,
        ts,
        ref_kl,
        ref_dx,
        None,
        True,
    )
    return {"binary_entropy": entropy, "binary_kl_divergence": kl}


def probability_bce_table():
    p = np.concatenate(
        [np.linspace(0, 1, 2001), np.geomspace(1e-30, 0.5, 400), 1 - np.geomspace(1e-7, 0.5, 400)]
    ).astype(F32)

    def jaxbce_fn(p, y):
        return jaxbce.binary_cross_entropy(p, y, reduction="none")

    impls = {"jaxbce": jax_value_and_grad(jaxbce_fn)}
    if torch is not None:
        impls["torch"] = torch_value_and_grad(
            lambda p, y: torch.nn.functional.binary_cross_entropy(p, y, reduction="none")
        )
    table: dict[str, dict[str, float]] = {}
    for label in (0.0, 1.0, 0.3):
        y = np.full_like(p, label)
        ref_loss, ref_grad, scale = reference.bce_with_probabilities(p, y)
        accumulate(table, measure(impls, p, y, ref_loss, ref_grad, scale, False))
    return table


def asl_reference_formula(gamma_pos, gamma_neg, clip, eps=1e-8):
    """The ASL reference implementation's formula (Ridnik et al.'s code, as in timm's AsymmetricLossMultiLabel),
    transcribed to JAX: probabilities, 1 - p by subtraction, the clip, an eps clamp before each log."""

    def loss(x, y):
        p = jax.nn.sigmoid(x)
        not_p = jnp.minimum(1 - p + clip, 1) if clip else 1 - p
        ce = y * jnp.log(jnp.maximum(p, eps)) + (1 - y) * jnp.log(jnp.maximum(not_p, eps))
        weight = (1 - (p * y + not_p * (1 - y))) ** (gamma_pos * y + gamma_neg * (1 - y))
        return -ce * weight

    return loss


ASL_SETTINGS = ((0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (0.0, 2.0, 0.0), (0.0, 1.0, 0.05))


def asymmetric_table(gamma_pos, gamma_neg, clip):
    x = reference.logit_grid(F32, dense=801, log_points=600, tail=601)
    options = {"gamma_pos": gamma_pos, "gamma_neg": gamma_neg, "clip": clip}
    impls = {
        "jaxbce": jax_value_and_grad(lambda x, y: jaxbce.asymmetric_loss(x, y, **options, reduction="none")),
        "reference formula (JAX)": jax_value_and_grad(asl_reference_formula(gamma_pos, gamma_neg, clip)),
    }
    if timm is not None:
        asl = timm.loss.AsymmetricLossMultiLabel(**options, reduction="none")
        impls["timm"] = torch_value_and_grad(asl)
    table: dict[str, dict[str, float]] = {}
    for label in (0.0, 1.0):  # the reference's focusing exponent is not linear in soft labels
        y = np.full_like(x, label)
        ref_loss, ref_grad, scale = reference.asymmetric(x, y, **options)
        accumulate(table, measure(impls, x, y, ref_loss, ref_grad, scale, True))
    return table


def poly1_tables():
    """Poly-1 (poly_epsilon = 1) on the logits BCE and the focal loss, against the plain formula added to
    the textbook BCE and to optax's focal loss. Results below twice the smallest normal number are not counted:
    there the loss and Poly-1's term can both be subnormal where their sum is not, and XLA flushes each term
    to 0 before the sum (as in tests/test_multilabel.py)."""
    x = reference.logit_grid(F32, dense=801, log_points=600, tail=601)
    floor = 2 * np.finfo(F32).tiny

    def plain_poly(x, y, exponent):
        return (1 - (jax.nn.sigmoid(x) * y + (1 - jax.nn.sigmoid(x)) * (1 - y))) ** exponent

    settings = {
        "binary_cross_entropy_with_logits, poly_epsilon=1": (
            lambda x, y: jaxbce.binary_cross_entropy_with_logits(x, y, poly_epsilon=1.0, reduction="none"),
            lambda x, y: textbook_bce(x, y) + plain_poly(x, y, 1.0),
            "textbook + plain Poly-1",
            lambda x, y: reference.bce_with_logits(x, y, poly_epsilon=1.0),
        ),
        "sigmoid_focal_loss, gamma=2, poly_epsilon=1": (
            lambda x, y: jaxbce.sigmoid_focal_loss(x, y, gamma=2.0, poly_epsilon=1.0, reduction="none"),
            None if optax is None else lambda x, y: optax.sigmoid_focal_loss(x, y, gamma=2.0) + plain_poly(x, y, 3.0),
            "optax + plain Poly-1",
            lambda x, y: reference.sigmoid_focal(x, y, alpha=0.25, gamma=2.0, poly_epsilon=1.0),
        ),
    }
    results = {}
    for setting, (ours, peer, peer_name, exact) in settings.items():
        impls = {"jaxbce": jax_value_and_grad(ours)}
        if peer is not None:
            impls[peer_name] = jax_value_and_grad(peer)
        table: dict[str, dict[str, float]] = {}
        for label in (0.0, 1.0, 0.3):
            y = np.full_like(x, label)
            loss, grad, scale = exact(x, y)
            counted = (np.abs(loss) >= floor) & ((np.abs(grad) >= floor) | (grad == 0))
            rows = measure(impls, x[counted], y[counted], loss[counted], grad[counted], scale[counted], label != 0.3)
            accumulate(table, rows)
        results[setting] = table
    return {"settings": results}


def main():
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "backend": jax.default_backend(),
        "versions": {
            "jax": jax.__version__,
            **{m.__name__: m.__version__ for m in (optax, torch, keras, torchvision, timm) if m is not None},
        },
        "binary_cross_entropy_with_logits": bce_with_logits_table(),
        "sigmoid_focal_loss": {
            "settings": {f"alpha=0.25, gamma={gamma}": focal_table(0.25, gamma) for gamma in FOCAL_GAMMAS}
        },
        "binary_cross_entropy": probability_bce_table(),
        **entropy_and_kl_table(),
        "asymmetric_loss": {
            "settings": {
                f"gamma_pos={gp}, gamma_neg={gn}, clip={clip}": asymmetric_table(gp, gn, clip)
                for gp, gn, clip in ASL_SETTINGS
            }
        },
        "poly1": poly1_tables(),
    }
    missing = set(LOSSES) - set(results)
    if missing:
        raise SystemExit(f"registered losses without an accuracy table here: {sorted(missing)}")
    backend = jax.default_backend()
    out = ROOT / "bench" / "results" / ("accuracy.json" if backend == "cpu" else f"accuracy-{backend}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if "--keep-missing-peers" in sys.argv[1:] and out.exists():
        _keep_missing_peers(results, json.loads(out.read_text()))
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)
    print(f"\nwrote {out.relative_to(ROOT)}")


def _keep_missing_peers(results: dict, previous: dict) -> None:
    """``--keep-missing-peers``: the previous run's rows of the implementations that are not installed here
    (PyTorch, torchvision and timm need a torch build of their own), kept beside this run's rows and named in
    ``results["rows kept from the previous run"]`` with that run's date and versions. Their inputs and references
    are the same; only jaxbce and the installed peers are measured anew."""
    kept = set()

    def merge(new, old):
        for key, value in old.items():
            if key not in new and key != "settings" and isinstance(value, dict) and "loss" in value:
                new[key] = value
                kept.add(key)
            elif isinstance(value, dict) and isinstance(new.get(key), dict):
                merge(new[key], value)

    for name in results:
        if isinstance(results[name], dict) and isinstance(previous.get(name), dict) and name != "versions":
            merge(results[name], previous[name])
    if kept:
        results["rows kept from the previous run"] = {
            "implementations": sorted(kept),
            "date": previous["date"],
            "versions": {k: v for k, v in previous["versions"].items() if k not in results["versions"]},
        }
        results["versions"] = {**previous["versions"], **results["versions"]}


def print_tables(results):
    # The same tables as docs/benchmarks.md (bench/report.py renders both), as Markdown.
    print("\n".join(report.accuracy_section(results)))


if __name__ == "__main__":
    main()
