# %% [markdown]
# # Gradient checks, Hessians and forward mode
#
# Every jaxbce loss is differentiable in every array argument, in forward and reverse mode, to any order. The
# elementwise cores carry `jax.custom_jvp` rules whose tangents are themselves stable expressions, so that
# `jax.hessian` is exact too.

# %%
import sys

sys.path.insert(0, "examples")  # examples/common.py: helpers shared with the examples and benchmarks

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.test_util import check_grads

import jaxbce
from common import textbook_bce

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
    print(f"check_grads order=2 fwd+rev passed: {name}")


# %% [markdown]
# ## Why the rules matter: x = 0 and the saturated tails
#
# The textbook formula `max(x, 0) - x*y + log1p(exp(-|x|))` is fine as a value, but autodiff differentiates
# `|x|` at 0 as 0 and `max(x, 0)` as a step, so its gradient at x = 0 is `0.5 - y - 0.5 = -y` (-0.5 for
# y = 0.5, instead of 0). jaxbce's rule takes the x <= 0 branch at 0, where it is exact: `0.5 - y`.

# %%
for name, fn in (("textbook", textbook_bce), ("jaxbce", jaxbce.binary_cross_entropy_with_logits)):
    g = jax.grad(fn)(0.0, 0.5)
    h = jax.hessian(fn)(0.0, 0.5)
    print(f"{name:9} d/dx at 0: {float(g):+.3f}   d2/dx2 at 0: {float(h):.3f}   (exact: 0 and 0.25)")

# %% [markdown]
# ## Forward mode and the Hessian across the line
#
# `jax.jvp` and `jax.hessian` (forward over reverse) go through the same rules. The second derivative is
# `(pw*y + 1 - y) * sigmoid(x) * sigmoid(-x)`; in float32 the textbook formula's Hessian collapses in the tails,
# where `sigmoid(x)` rounds to 1.

# %%
xs = jnp.linspace(-40.0, 40.0, 401, dtype=jnp.float32)
y = jnp.float32(0.3)
exact = np.exp(-np.logaddexp(0, -np.asarray(xs, np.float64)) - np.logaddexp(0, np.asarray(xs, np.float64)))
fig, ax = plt.subplots(figsize=(8, 3.5))
for name, fn in (("textbook", textbook_bce), ("jaxbce", jaxbce.binary_cross_entropy_with_logits)):
    hess = jax.vmap(jax.hessian(fn), in_axes=(0, None))(xs, y)
    ax.semilogy(xs, np.maximum(np.abs(np.asarray(hess, np.float64)), 1e-40), label=name)
ax.semilogy(xs, exact, "k:", label="exact sigmoid(x) sigmoid(-x)")
ax.set(xlabel="logit x", ylabel="d2 loss / dx2", ylim=(1e-20, 1))
ax.legend()
plt.show()
tangent = jax.jvp(
    lambda v: jaxbce.binary_cross_entropy_with_logits(v, jnp.ones_like(v), reduction="none"),
    (jnp.array([20.0, 40.0], jnp.float32),),
    (jnp.ones(2, jnp.float32),),
)[1]
print("forward-mode tangent at x = 20, 40 with y = 1:", tangent, "(exact: -sigmoid(-x) = -2.06e-09, -4.25e-18)")
