# %% [markdown]
# # Stability: what the usual formulas do at extreme logits
#
# Binary cross-entropy from logits is `y*softplus(-x) + (1-y)*softplus(x)`, with gradient `sigmoid(x) - y`.
# Four ways to compute it in float32, against a 50-digit reference (mpmath):
#
# * **naive**: `sigmoid`, then `log`: saturates to `log(0)` beyond |x| ~ 17 (float32);
# * **textbook**: `max(x, 0) - x*y + log1p(exp(-|x|))`, the usual "stable" rewrite, differentiated by autodiff;
# * **optax** `sigmoid_binary_cross_entropy` (log-sigmoid form);
# * **jaxbce**, whose elementwise core and `custom_jvp` rule are written so that no term cancels another.

# %%
import sys

sys.path.insert(0, "examples")  # examples/common.py: helpers shared with the examples and benchmarks

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import mpmath
import numpy as np
import optax

import jaxbce
from common import naive_bce, textbook_bce

mpmath.mp.dps = 50
x = np.linspace(-60, 60, 1201).astype(np.float32)


implementations = {
    "naive": naive_bce,
    "textbook": textbook_bce,
    "optax": optax.sigmoid_binary_cross_entropy,
    "jaxbce": lambda x, y: jaxbce.binary_cross_entropy_with_logits(x, y, reduction="none"),
}


def loss_and_grad(fn, x, y):
    y = jnp.full_like(x, y)
    return np.asarray(fn(x, y)), np.asarray(jax.grad(lambda v: jnp.sum(fn(v, y)))(x))


# %% [markdown]
# ## Loss and gradient for y = 1
#
# For a positive label the loss is `softplus(-x)`: it falls like `exp(-x)` for large x, and the gradient is
# `-sigmoid(-x)`, not 0. On a log scale the naive form hits `inf`, and the textbook form's gradient drops to
# exactly 0 once `sigmoid(x)` rounds to 1.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, fn in implementations.items():
    loss, grad = loss_and_grad(fn, x, 1.0)
    axes[0].semilogy(x, loss, label=name, alpha=0.8)
    axes[1].semilogy(x, np.abs(grad), label=name, alpha=0.8)
axes[0].set(title="loss, y = 1", xlabel="logit x")
axes[1].set(title="|d loss / dx|, y = 1", xlabel="logit x")
axes[1].legend()
plt.show()


# %% [markdown]
# ## Error in eps against mpmath
#
# The error of each implementation, in units of float32's epsilon, relative to the exact value at the same
# float32 inputs (hard label y = 1 and soft label y = 0.3). Points where an implementation returns a
# non-finite value are drawn at the top of the plot.


# %%
def exact(x, y):
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
plt.show()

# %%
worst = {}
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
    print(f"{name:10}" + "".join(f"{e:12.3g}" for e in errors))

# %% [markdown]
# ## Summary
#
# jaxbce stays within 1.5 eps everywhere on this grid. `bench/accuracy.py` runs the same comparison over
# [-1e4, 1e4] and nine labels for every function of the package and writes `bench/results/accuracy.json`.
