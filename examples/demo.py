"""jaxbce demo: train a classifier with an exact loss, then see what the usual formulas do at extreme logits.

Run with `make demo` (or `python examples/demo.py` inside the project's virtual environment). Part 1 trains a
small Flax NNX network with Optax on scikit-learn's bundled breast-cancer data (no download), weighting the
rare class with `pos_weight`; part 2 prints the loss and gradient of four implementations at extreme logits.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import jaxbce
from common import MLP, naive_bce, textbook_bce


def train(steps: int = 400) -> None:
    data = load_breast_cancer()
    # In this data set 1 means benign; we predict malignancy, the minority class (37%).
    x, y = data.data.astype(np.float32), (data.target == 0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    mean, std = x_train.mean(0), x_train.std(0)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    pos_weight = float((1 - y_train).sum() / y_train.sum())
    print(
        f"Breast-cancer data: {len(x_train)} training and {len(x_test)} held-out patients, "
        f"{x.shape[1]} features, {y.mean():.0%} malignant; pos_weight = {pos_weight:.2f} (negatives / positives)."
    )

    model = MLP(x.shape[1], 32, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, features, labels):
        def loss_fn(model):
            return jaxbce.binary_cross_entropy_with_logits(model(features), labels, pos_weight=pos_weight)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    # A bar on a terminal; in a log (CI, a pipe) a line every 100 steps instead of a redrawn bar.
    on_terminal = sys.stderr.isatty()
    with tqdm(range(steps), desc="training", unit="step", disable=not on_terminal) as progress:
        for step in progress:
            batch = rng.choice(len(x_train), size=64, replace=False)
            loss = train_step(model, optimizer, x_train[batch], y_train[batch])
            if on_terminal and step % 50 == 0:
                progress.set_postfix(loss=f"{float(loss):.4f}")
            elif not on_terminal and (step % 100 == 0 or step == steps - 1):
                print(f"training: step {step + 1}/{steps}, loss {float(loss):.4f}", flush=True)
    elapsed = time.perf_counter() - start

    logits = np.asarray(model(jnp.asarray(x_test)))
    accuracy = ((logits > 0) == (y_test == 1)).mean()
    auc = roc_auc_score(y_test, logits)
    test_loss = jaxbce.binary_cross_entropy_with_logits(logits, y_test)
    print(
        f"Trained {steps} Adam steps of 64 patients in {elapsed:.1f} s. On the {len(x_test)} held-out patients: "
        f"accuracy {accuracy:.1%}, ROC-AUC {auc:.4f}, mean loss {float(test_loss):.4f}."
    )


def stability_table() -> None:
    """Loss and d/dlogit of four implementations at extreme logits, in float32."""
    x = jnp.array([-200.0, 17.0, 30.0, 0.0, -30.0, 200.0, 20.0], jnp.float32)
    y = jnp.array([1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.9], jnp.float32)

    implementations = {
        "naive sigmoid+log": naive_bce,
        "textbook max(x,0)-xy+log1p(e^-|x|)": textbook_bce,
        "optax.sigmoid_binary_cross_entropy": optax.sigmoid_binary_cross_entropy,
        "jaxbce": lambda x, y: jaxbce.binary_cross_entropy_with_logits(x, y, reduction="none"),
    }
    print("\nExtreme logits, float32. Exact: loss = y*softplus(-x) + (1-y)*softplus(x), gradient = sigmoid(x) - y.")
    print("For x = 17, y = 1 that is loss 4.14e-08, gradient -4.14e-08; for x = 30, y = 1: 9.36e-14 and -9.36e-14;")
    print("for x = 20, y = 0.9: loss 2.0000000, gradient 0.09999999794; for x = 0, y = 0.5: gradient 0.")
    header = "".join(f"{f'x={float(v):g},y={float(w):g}':>14}" for v, w in zip(x, y, strict=True))
    for quantity in ("loss", "gradient"):
        print(f"\n{quantity:<36}{header}")
        for name, fn in implementations.items():
            values = fn(x, y) if quantity == "loss" else jax.vmap(jax.grad(fn))(x, y)
            nans = int(np.isnan(values).sum())
            row = "".join(f"{float(v):>14.6g}" for v in values)
            print(f"{name:<36}{row}   ({nans} NaN)")
    print(
        "\nThe naive form saturates (log(0) = -inf, then NaN gradients). The textbook form under autodiff returns "
        "-0.5 instead of 0 at x = 0, y = 0.5 (d|x|/dx = 0 there) and 0 instead of -sigmoid(-x) for "
        "well-classified examples. Optax and jaxbce agree at these points; their differences are a few eps, "
        "measured against a 50-digit reference by bench/accuracy.py."
    )


if __name__ == "__main__":
    train()
    stability_table()
