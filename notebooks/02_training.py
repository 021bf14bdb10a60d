# %% [markdown]
# # Training with Flax NNX and Optax
#
# Two tasks on scikit-learn's bundled data (nothing to download):
#
# 1. **Imbalanced binary classification** (breast cancer, 37% malignant) with `pos_weight` set from the class
#    ratio.
# 2. **Multi-label classification** of handwritten digits with four binary attributes per image, some labels
#    missing (masked with `where`), and label smoothing.

# %%
import sys

sys.path.insert(0, "examples")  # examples/common.py: helpers shared with the examples and benchmarks

import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

import jaxbce
from common import MLP


def standardize(train, test):
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


# %% [markdown]
# ## 1. Imbalanced data: `pos_weight`
#
# `pos_weight = negatives / positives` weighs each positive example as much as the whole negative class weighs
# per example, PyTorch's recipe for imbalance.

# %%
data = load_breast_cancer()
x, y = data.data.astype(np.float32), (data.target == 0).astype(np.float32)  # 1 = malignant
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
x_train, x_test = standardize(x_train, x_test)
pos_weight = float((1 - y_train).sum() / y_train.sum())

model = MLP(30, 32, rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-3), wrt=nnx.Param)


@nnx.jit
def step(model, optimizer, x, y):
    def loss_fn(model):
        return jaxbce.binary_cross_entropy_with_logits(model(x), y, pos_weight=pos_weight)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


rng = np.random.default_rng(0)
bc_curve = []
for _ in range(400):
    batch = rng.choice(len(x_train), 64, replace=False)
    bc_curve.append(float(step(model, optimizer, x_train[batch], y_train[batch])))
logits = np.asarray(model(x_test))
print(
    f"pos_weight {pos_weight:.2f}; held-out accuracy {((logits > 0) == y_test).mean():.1%}, "
    f"ROC-AUC {roc_auc_score(y_test, logits):.4f}"
)

# %% [markdown]
# ## 2. Multi-label digits with missing labels and label smoothing
#
# Each 8x8 digit gets four binary attributes: *even*, *at least 5*, *prime*, *has a closed loop* (0, 6, 8, 9).
# A fifth of the training labels are marked unknown: `where=known` removes them from the loss and from every
# gradient, even though we fill them with NaN to prove the point. `reduction="mean", axis=-1` would give one
# loss per image; here the default mean runs over every known label.

# %%
digits = load_digits()
d = digits.target
attributes = np.stack([d % 2 == 0, d >= 5, np.isin(d, [2, 3, 5, 7]), np.isin(d, [0, 6, 8, 9])], 1)
names = ["even", ">= 5", "prime", "loop"]
x_train, x_test, a_train, a_test = train_test_split(
    digits.data.astype(np.float32), attributes.astype(np.float32), test_size=0.3, random_state=0
)
x_train, x_test = standardize(x_train, x_test)
known = np.random.default_rng(1).uniform(size=a_train.shape) > 0.2
a_train_padded = np.where(known, a_train, np.nan).astype(np.float32)  # unknown labels: garbage


def train(label_smoothing, steps=600):
    model = MLP(64, 64, 4, rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.adam(2e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y, m):
        def loss_fn(model):
            return jaxbce.binary_cross_entropy_with_logits(model(x), y, where=m, label_smoothing=label_smoothing)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng, curve = np.random.default_rng(0), []
    for _ in range(steps):
        b = rng.choice(len(x_train), 128, replace=False)
        curve.append(float(step(model, optimizer, x_train[b], a_train_padded[b], known[b])))
    accuracy = ((np.asarray(model(x_test)) > 0) == (a_test == 1)).mean(0)
    return curve, accuracy


results = {s: train(s) for s in (0.0, 0.1)}
for s, (curve, accuracy) in results.items():
    scores = ", ".join(f"{n} {a:.1%}" for n, a in zip(names, accuracy, strict=True))
    print(f"label_smoothing={s}: held-out accuracy {scores}")
    assert np.isfinite(curve).all()  # the NaN labels never reached the loss

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(np.convolve(bc_curve, np.ones(10) / 10, "valid"), label="breast cancer (pos_weight)")
for s, (c, _) in results.items():
    ax.plot(np.convolve(c, np.ones(10) / 10, "valid"), label=f"digits, label_smoothing={s}")
ax.set(xlabel="step", ylabel="training loss (moving mean)", yscale="log")
ax.legend()
plt.show()

# %% [markdown]
# ## Reading the curves
#
# With label smoothing the loss cannot fall below the entropy of the smoothed targets (0.199 nats for
# s = 0.1), which is why its curve levels off higher; held-out accuracy is what to compare.
