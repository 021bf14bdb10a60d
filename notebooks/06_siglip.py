# %% [markdown]
# # A two-tower model trained with the SigLIP loss
#
# SigLIP (Zhai et al., ICCV 2023) trains an image tower and a text tower so that matching pairs score high and
# every other pair of the batch scores low, each pair a binary classification:
# `jaxbce.sigmoid_contrastive_loss`. Here the "pairs" come from scikit-learn's bundled digits: the left half
# of an 8x8 image is one view, its right half the other, and the task is to find, among held-out halves, the
# one that belongs to a given half (retrieval). The initialisation is the paper's: the logit scale is
# `exp(t)` with `t = log 10`, the bias -10. The loss is computed in chunks of 128 x 128 pairs, never as the
# batch's full matrix of logits.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import jaxbce

digits = load_digits()
images = digits.images.astype(np.float32) / 16
left, right = images[:, :, :4].reshape(-1, 32), images[:, :, 4:].reshape(-1, 32)
order = np.random.default_rng(0).permutation(len(images))
train, test = order[:1300], order[1300:]
print(f"{len(train)} training pairs, {len(test)} held-out pairs")


def init(key, hidden=128, dim=32):
    keys = jax.random.split(key, 4)
    layer = lambda k, n, m: jax.random.normal(k, (n, m)) / np.sqrt(n)  # noqa: E731
    return {
        "left": (layer(keys[0], 32, hidden), layer(keys[1], hidden, dim)),
        "right": (layer(keys[2], 32, hidden), layer(keys[3], hidden, dim)),
        "log_scale": jnp.log(10.0),
        "bias": jnp.asarray(-10.0),
    }


def embed(tower, x):
    hidden, out = tower
    z = jax.nn.gelu(x @ hidden) @ out
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


def loss_fn(params, a, b):
    x, z = embed(params["left"], a), embed(params["right"], b)
    return jaxbce.sigmoid_contrastive_loss(x, z, jnp.exp(params["log_scale"]), params["bias"], chunk_size=128)


def top1(params, a, b):
    """Retrieval accuracy among the given pairs: left -> right and right -> left."""
    similarity = embed(params["left"], a) @ embed(params["right"], b).T
    truth = np.arange(len(a))
    return float((similarity.argmax(1) == truth).mean()), float((similarity.argmax(0) == truth).mean())


optimizer = optax.adam(3e-3)


@jax.jit
def step(params, opt_state, a, b):
    loss, grads = jax.value_and_grad(loss_fn)(params, a, b)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


params = init(jax.random.key(0))
opt_state = optimizer.init(params)
rng = np.random.default_rng(1)
history = []
for i in range(600):
    batch = rng.choice(train, 512, replace=False)
    params, opt_state, loss = step(params, opt_state, left[batch], right[batch])
    if i % 50 == 49:
        history.append((i + 1, float(loss), *top1(params, left[test], right[test])))

for i, loss, l2r, r2l in history[-3:]:
    print(f"step {i}: loss {loss:.4f}, held-out top-1 left->right {l2r:.1%}, right->left {r2l:.1%}")
scale_now, bias_now = float(jnp.exp(params["log_scale"])), float(params["bias"])
print(f"chance: {1 / len(test):.2%}; logit scale {scale_now:.2f}, bias {bias_now:.2f}")

# %% [markdown]
# Top-1 among about 500 held-out halves is far above chance, and well below 100%: halves of two different
# 3s can match equally well, so the task has no unique answer for many pairs.
#
# The chunked loss is the dense one: on a held-out batch, against big_vision's form (`log_sigmoid` of the full
# logits with labels `2 I - 1`, summed over texts and averaged over images).

# %%
x, z = embed(params["left"], left[test]), embed(params["right"], right[test])
scale, bias = jnp.exp(params["log_scale"]), params["bias"]
dense = -jnp.sum(jax.nn.log_sigmoid((2 * jnp.eye(len(test)) - 1) * (scale * x @ z.T + bias))) / len(test)
print(
    f"chunked {float(jaxbce.sigmoid_contrastive_loss(x, z, scale, bias, chunk_size=128)):.6f}, dense {float(dense):.6f}"
)

steps, losses, l2r, r2l = zip(*history, strict=True)
fig, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.5))
loss_axis.plot(steps, losses)
loss_axis.set_xlabel("step")
loss_axis.set_ylabel("training loss")
accuracy_axis.plot(steps, l2r, label="left -> right")
accuracy_axis.plot(steps, r2l, label="right -> left")
accuracy_axis.set_xlabel("step")
accuracy_axis.set_ylabel(f"held-out top-1 among {len(test)}")
accuracy_axis.legend()
plt.tight_layout()
plt.show()
