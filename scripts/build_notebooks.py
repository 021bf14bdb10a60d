"""Write the notebooks in notebooks/ from the cell sources below and execute them, so that the committed files
carry real outputs. The test suite (tests/test_notebooks.py) executes the committed notebooks again.

    python scripts/build_notebooks.py [NAME ...]
"""

import pathlib
import sys

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]

STABILITY = [
    """# Stability: what the usual formulas do at extreme logits

Binary cross-entropy from logits is `y*softplus(-x) + (1-y)*softplus(x)`, with gradient `sigmoid(x) - y`.
Four ways to compute it in float32, against a 50-digit reference (mpmath):

* **naive**: `sigmoid`, then `log`: saturates to `log(0)` beyond |x| ~ 17 (float32);
* **textbook**: `max(x, 0) - x*y + log1p(exp(-|x|))`, the usual "stable" rewrite, differentiated by autodiff;
* **optax** `sigmoid_binary_cross_entropy` (log-sigmoid form);
* **jaxbce**, whose elementwise core and `custom_jvp` rule are written so that no term cancels another.""",
    """import jax, jax.numpy as jnp, numpy as np, optax, mpmath, matplotlib.pyplot as plt
import jaxbce

mpmath.mp.dps = 50
x = np.linspace(-60, 60, 1201).astype(np.float32)


def naive(x, y):
    p = jax.nn.sigmoid(x)
    return -(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))


def textbook(x, y):
    return jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


implementations = {
    "naive": naive,
    "textbook": textbook,
    "optax": optax.sigmoid_binary_cross_entropy,
    "jaxbce": lambda x, y: jaxbce.binary_cross_entropy_with_logits(x, y, reduction="none"),
}


def loss_and_grad(fn, x, y):
    y = jnp.full_like(x, y)
    return np.asarray(fn(x, y)), np.asarray(jax.grad(lambda v: jnp.sum(fn(v, y)))(x))""",
    """## Loss and gradient for y = 1

For a positive label the loss is `softplus(-x)`: it falls like `exp(-x)` for large x, and the gradient is
`-sigmoid(-x)`, not 0. On a log scale the naive form hits `inf`, and the textbook form's gradient drops to
exactly 0 once `sigmoid(x)` rounds to 1.""",
    """fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, fn in implementations.items():
    loss, grad = loss_and_grad(fn, x, 1.0)
    axes[0].semilogy(x, loss, label=name, alpha=0.8)
    axes[1].semilogy(x, np.abs(grad), label=name, alpha=0.8)
axes[0].set(title="loss, y = 1", xlabel="logit x")
axes[1].set(title="|d loss / dx|, y = 1", xlabel="logit x")
axes[1].legend()
plt.show()""",
    """## Error in eps against mpmath

The error of each implementation, in units of float32's epsilon, relative to the exact value at the same
float32 inputs (hard label y = 1 and soft label y = 0.3). Points where an implementation returns a
non-finite value are drawn at the top of the plot.""",
    """def exact(x, y):
    xs, ys = [mpmath.mpf(float(v)) for v in x], mpmath.mpf(float(np.float32(y)))
    sp = lambda v: mpmath.log1p(mpmath.exp(v))  # noqa: E731
    loss = np.array([float(ys * sp(-v) + (1 - ys) * sp(v)) for v in xs])
    grad = np.array([float(1 / (1 + mpmath.exp(-v)) - ys) for v in xs])
    return loss, grad


eps = np.finfo(np.float32).eps
fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
for row, y in enumerate((1.0, 0.3)):
    ref_loss, ref_grad = exact(x, y)
    for name, fn in implementations.items():
        loss, grad = loss_and_grad(fn, x, np.float32(y))
        for col, (got, ref) in enumerate(((loss, ref_loss), (grad, ref_grad))):
            with np.errstate(invalid="ignore", divide="ignore"):
                err = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-38) / eps
            err = np.where(np.isfinite(err), err, 1e9)
            axes[row, col].semilogy(x, np.maximum(err, 1e-2), ".", markersize=2, label=name)
    axes[row, 0].set_title(f"loss error (eps), y = {y}")
    axes[row, 1].set_title(f"gradient error (eps), y = {y}")
axes[0, 1].legend(markerscale=6)
for ax in axes[1]:
    ax.set_xlabel("logit x")
plt.tight_layout()
plt.show()""",
    """worst = {}
for name, fn in implementations.items():
    errors = []
    for y in (1.0, 0.3):
        ref_loss, ref_grad = exact(x, y)
        loss, grad = loss_and_grad(fn, x, np.float32(y))
        with np.errstate(invalid="ignore", divide="ignore"):
            errors.append(np.nanmax(np.abs(loss - ref_loss) / ref_loss) / eps)
            scale = np.maximum(np.abs(ref_grad), np.maximum(1 / (1 + np.exp(-x.astype(np.float64))), y))
            errors.append(np.nanmax(np.abs(grad - ref_grad) / scale) / eps)
    worst[name] = errors
print(f"{'':10}{'loss y=1':>12}{'grad y=1':>12}{'loss y=.3':>12}{'grad y=.3':>12}")
for name, errors in worst.items():
    print(f"{name:10}" + "".join(f"{e:12.3g}" for e in errors))""",
    """## Summary

jaxbce stays within 1.5 eps everywhere on this grid. `bench/accuracy.py` runs the same comparison over
[-1e4, 1e4] and nine labels for every function of the package and writes `bench/results/accuracy.json`.""",
]

TRAINING = [
    """# Training with Flax NNX and Optax

Two tasks on scikit-learn's bundled data (nothing to download):

1. **Imbalanced binary classification** (breast cancer, 37% malignant) with `pos_weight` set from the class
   ratio.
2. **Multi-label classification** of handwritten digits with four binary attributes per image, some labels
   missing (masked with `where`), and label smoothing.""",
    """import jax, jax.numpy as jnp, numpy as np, optax, matplotlib.pyplot as plt
from flax import nnx
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
import jaxbce


class MLP(nnx.Module):
    def __init__(self, features, hidden, outputs, rngs):
        self.hidden = nnx.Linear(features, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, outputs, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.gelu(self.hidden(x)))


def standardize(train, test):
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std""",
    """## 1. Imbalanced data: `pos_weight`

`pos_weight = negatives / positives` weighs each positive example as much as the whole negative class weighs
per example, PyTorch's recipe for imbalance.""",
    """data = load_breast_cancer()
x, y = data.data.astype(np.float32), (data.target == 0).astype(np.float32)  # 1 = malignant
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
x_train, x_test = standardize(x_train, x_test)
pos_weight = float((1 - y_train).sum() / y_train.sum())

model = MLP(30, 32, 1, rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-3), wrt=nnx.Param)


@nnx.jit
def step(model, optimizer, x, y):
    def loss_fn(model):
        return jaxbce.binary_cross_entropy_with_logits(model(x)[:, 0], y, pos_weight=pos_weight)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


rng = np.random.default_rng(0)
bc_curve = []
for i in range(400):
    batch = rng.choice(len(x_train), 64, replace=False)
    bc_curve.append(float(step(model, optimizer, x_train[batch], y_train[batch])))
logits = np.asarray(model(x_test)[:, 0])
print(f"pos_weight {pos_weight:.2f}; held-out accuracy {((logits > 0) == y_test).mean():.1%}, "
      f"ROC-AUC {roc_auc_score(y_test, logits):.4f}")""",
    """## 2. Multi-label digits with missing labels and label smoothing

Each 8x8 digit gets four binary attributes: *even*, *at least 5*, *prime*, *has a closed loop* (0, 6, 8, 9).
A fifth of the training labels are marked unknown: `where=known` removes them from the loss and from every
gradient, even though we fill them with NaN to prove the point. `reduction="mean", axis=-1` would give one
loss per image; here the default mean runs over every known label.""",
    """digits = load_digits()
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
    print(f"label_smoothing={s}: held-out accuracy " + ", ".join(f"{n} {a:.1%}" for n, a in zip(names, accuracy)))
    assert np.isfinite(curve).all()  # the NaN labels never reached the loss""",
    """fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(np.convolve(bc_curve, np.ones(10) / 10, "valid"), label="breast cancer (pos_weight)")
for s, (c, _) in results.items():
    ax.plot(np.convolve(c, np.ones(10) / 10, "valid"), label=f"digits, label_smoothing={s}")
ax.set(xlabel="step", ylabel="training loss (moving mean)", yscale="log")
ax.legend()
plt.show()""",
    """## Reading the curves

With label smoothing the loss cannot fall below the entropy of the smoothed targets (0.199 nats for
s = 0.1), which is why its curve levels off higher; held-out accuracy is what to compare.""",
]

GRADIENTS = [
    """# Gradient checks, Hessians and forward mode

Every jaxbce loss is differentiable in every array argument, in forward and reverse mode, to any order. The
elementwise cores carry `jax.custom_jvp` rules whose tangents are themselves stable expressions, so that
`jax.hessian` is exact too.""",
    """import jax, jax.numpy as jnp, numpy as np, matplotlib.pyplot as plt
from jax.test_util import check_grads
import jaxbce

jax.config.update("jax_enable_x64", True)  # check_grads compares against finite differences: use float64
rng = np.random.default_rng(0)
x, t = rng.normal(scale=3, size=(2, 4, 3))
y = rng.uniform(0.05, 0.95, size=(4, 3))
w, pw = rng.uniform(0.5, 2, size=(4, 3)), rng.uniform(0.5, 3, size=(3,))

checks = {
    "bce_with_logits (x, y, w, pw)": (
        lambda x, y, w, pw: jaxbce.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw),
        (x, y, w, pw),
    ),
    "sigmoid_focal_loss (x, y, w)": (lambda x, y, w: jaxbce.sigmoid_focal_loss(x, y, weight=w), (x, y, w)),
    "binary_entropy (x)": (jaxbce.binary_entropy, (x,)),
    "binary_kl_divergence (x, t, w)": (lambda x, t, w: jaxbce.binary_kl_divergence(x, t, weight=w), (x, t, w)),
}
for name, (fn, args) in checks.items():
    check_grads(fn, args, order=2, modes=("fwd", "rev"), eps=1e-4)
    print(f"check_grads order=2 fwd+rev passed: {name}")""",
    """## Why the rules matter: x = 0 and the saturated tails

The textbook formula `max(x, 0) - x*y + log1p(exp(-|x|))` is fine as a value, but autodiff differentiates
`|x|` at 0 as 0 and `max(x, 0)` as a step, so its gradient at x = 0 is `0.5 - y - 0.5 = -y` (-0.5 for
y = 0.5, instead of 0). jaxbce's rule takes the x <= 0 branch at 0, where it is exact: `0.5 - y`.""",
    """def textbook(x, y):
    return jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


for name, fn in (("textbook", textbook), ("jaxbce", jaxbce.binary_cross_entropy_with_logits)):
    g = jax.grad(fn)(0.0, 0.5)
    h = jax.hessian(fn)(0.0, 0.5)
    print(f"{name:9} d/dx at 0: {float(g):+.3f}   d2/dx2 at 0: {float(h):.3f}   (exact: 0 and 0.25)")""",
    """## Forward mode and the Hessian across the line

`jax.jvp` and `jax.hessian` (forward over reverse) go through the same rules. The second derivative is
`(pw*y + 1 - y) * sigmoid(x) * sigmoid(-x)`; in float32 the textbook formula's Hessian collapses in the tails,
where `sigmoid(x)` rounds to 1.""",
    """xs = jnp.linspace(-40.0, 40.0, 401, dtype=jnp.float32)
y = jnp.float32(0.3)
exact = np.exp(-np.logaddexp(0, -np.asarray(xs, np.float64)) - np.logaddexp(0, np.asarray(xs, np.float64)))
fig, ax = plt.subplots(figsize=(8, 3.5))
for name, fn in (("textbook", textbook), ("jaxbce", jaxbce.binary_cross_entropy_with_logits)):
    hess = jax.vmap(jax.hessian(lambda v: fn(v, y)))(xs)
    ax.semilogy(xs, np.maximum(np.abs(np.asarray(hess, np.float64)), 1e-40), label=name)
ax.semilogy(xs, exact, "k:", label="exact sigmoid(x) sigmoid(-x)")
ax.set(xlabel="logit x", ylabel="d2 loss / dx2", ylim=(1e-20, 1))
ax.legend()
plt.show()
tangent = jax.jvp(lambda v: jaxbce.binary_cross_entropy_with_logits(v, jnp.ones_like(v), reduction="none"),
                  (jnp.array([20.0, 40.0], jnp.float32),), (jnp.ones(2, jnp.float32),))[1]
print("forward-mode tangent at x = 20, 40 with y = 1:", tangent, "(exact: -sigmoid(-x) = -2.06e-09, -4.25e-18)")""",
]

FOCAL = [
    """# Focal loss for rare positives, and distillation with binary KL

`sigmoid_focal_loss` down-weights easy examples by `(1 - p_t)**gamma`; `binary_kl_divergence` trains a
student to match a teacher's logits. Both are computed so that values, gradients and Hessians stay finite at
any logit (the failure of optax#1267 was NaN gradients at gamma = 0, logit 1000).""",
    """import jax, jax.numpy as jnp, numpy as np, optax, matplotlib.pyplot as plt
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score
from sklearn.model_selection import train_test_split
import jaxbce

print("focal gradient at logit 1000, y = 0, gamma = 0:",
      jax.grad(lambda v: jaxbce.sigmoid_focal_loss(v, 0.0, gamma=0.0))(1000.0))
print("Hessian at logit -1000, y = 1, gamma = 0.5:",
      jax.hessian(lambda v: jaxbce.sigmoid_focal_loss(v, 1.0, gamma=0.5))(-1000.0))""",
    """## A rare-positive task

Synthetic data: 2% positives in a noisy 2-D mixture. The same small network trained with plain BCE and with
focal loss (alpha 0.25, gamma 2); we compare the held-out average precision.""",
    """rng = np.random.default_rng(0)
n = 20000
labels = (rng.uniform(size=n) < 0.02).astype(np.float32)
centers = np.where(labels[:, None] == 1, [1.5, 1.5], [0.0, 0.0])
features = (centers + rng.normal(size=(n, 2))).astype(np.float32)
x_train, x_test, y_train, y_test = train_test_split(features, labels, test_size=0.5, random_state=0)


class Net(nnx.Module):
    def __init__(self, features, hidden, rngs):
        self.a, self.b = nnx.Linear(features, hidden, rngs=rngs), nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x):
        return self.b(nnx.gelu(self.a(x)))[:, 0]


def fit(loss, x, target, hidden=16, steps=800, seed=0):
    model = Net(x.shape[1], hidden, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, tb):
        value, grads = nnx.value_and_grad(lambda m: loss(m(xb), tb))(model)
        optimizer.update(model, grads)
        return value

    r = np.random.default_rng(seed)
    for _ in range(steps):
        b = r.choice(len(x), 512, replace=False)
        step(model, optimizer, x[b], target[b])
    return model


for name, loss in (
    ("BCE", jaxbce.binary_cross_entropy_with_logits),
    ("focal", lambda z, t: jaxbce.sigmoid_focal_loss(z, t, alpha=0.25, gamma=2.0)),
):
    model = fit(loss, x_train, y_train)
    print(f"{name:6} held-out average precision {average_precision_score(y_test, np.asarray(model(x_test))):.3f}")""",
    """## What the comparison shows

Focal loss is no free lunch: on this small, well-separated task it matches plain BCE in average precision
rather than beating it (the printed figures above are this run's). Its use is in detection-style problems
where a flood of easy negatives dominates the BCE gradient; what jaxbce adds is that it stays finite and exact
at any logit and any gamma, with `alpha=None` and soft labels as torchvision has them.""",
    """## Distillation from teacher logits

A teacher network (64 hidden units) learns *is the digit even?*; a student (4 hidden units) then learns from
the teacher's logits alone with `binary_kl_divergence(student_logits, teacher_logits)`. The KL is exactly 0
where the student matches the teacher, and `CE = H + KL`: minimising the KL is minimising cross-entropy to the
teacher's soft labels, minus a constant.""",
    """digits = load_digits()
x = digits.data.astype(np.float32) / 16
even = (digits.target % 2 == 0).astype(np.float32)
x_train, x_test, e_train, e_test = train_test_split(x, even, test_size=0.3, random_state=0)
teacher = fit(jaxbce.binary_cross_entropy_with_logits, x_train, e_train, hidden=64, steps=1500)
teacher_logits = np.asarray(teacher(x_train))
student = fit(jaxbce.binary_kl_divergence, x_train, teacher_logits, hidden=4, steps=1500, seed=1)
for name, model in (("teacher", teacher), ("student", student)):
    print(f"{name}: held-out accuracy {((np.asarray(model(x_test)) > 0) == (e_test == 1)).mean():.1%}")
z, t = np.asarray(student(x_test)), np.asarray(teacher(x_test))
ce = jaxbce.binary_cross_entropy_with_logits(z, jax.nn.sigmoid(t))
h, kl = jaxbce.binary_entropy(t), jaxbce.binary_kl_divergence(z, t)
print(f"on held-out digits: CE {float(ce):.6f} = H {float(h):.6f} + KL {float(kl):.6f}")
plt.figure(figsize=(4, 4))
plt.scatter(t, z, s=4)
plt.xlabel("teacher logit")
plt.ylabel("student logit")
plt.show()""",
]

NOTEBOOKS = {
    "01_stability": STABILITY,
    "02_training": TRAINING,
    "03_gradient_checks": GRADIENTS,
    "04_focal_and_distillation": FOCAL,
}


def build(name: str) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for source in NOTEBOOKS[name]:
        # Markdown cells start with a heading; code cells never start with "#".
        new_cell = nbformat.v4.new_markdown_cell if source.startswith("#") else nbformat.v4.new_code_cell
        notebook.cells.append(new_cell(source))
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    path = ROOT / "notebooks" / f"{name}.ipynb"
    path.parent.mkdir(exist_ok=True)
    nbformat.write(notebook, path)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    for name in sys.argv[1:] or NOTEBOOKS:
        build(name)
