"""Regenerate tests/data/golden.npz: reference values from PyTorch, torchvision, Keras and timm.

The tests compare jaxbce against these files, so they never need torch to run. Run this where the peers are
installed (CPU builds are enough), for example in a scratch virtual environment:

    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch torchvision keras timm numpy
    KERAS_BACKEND=torch /tmp/peers/bin/python scripts/make_golden.py

Inputs come from a fixed NumPy seed and are stored next to the outputs. Peers compute in float64, so the
stored values are references for jaxbce's float32 results and not float32 rounding noise. Keras converts
logits to probabilities and clips them at 1e-7, so its cases keep |logits| <= 8, where clipping does not act.
timm's AsymmetricLossMultiLabel computes in float32 whatever its input, so its inputs are float32 and its
values are float32 results (accurate to about 1e-6 relative for |logits| <= 6); two elements at -20 and 30 show
its probability clamp at 1e-8.
"""

import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import timm
import timm.loss
import torch
import torchvision

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "golden.npz"
REDUCTIONS = ("none", "sum", "mean")


def main() -> None:
    rng = np.random.default_rng(2026)
    data: dict[str, np.ndarray] = {}
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731

    # BCEWithLogitsLoss: logits with extreme values, soft and hard labels, weight, per-class pos_weight.
    logits = rng.normal(scale=4.0, size=(6, 4))
    logits[0] = [30.0, -30.0, 100.0, -100.0]
    labels = rng.uniform(size=(6, 4))
    labels[1] = [0.0, 1.0, 1.0, 0.0]
    weight = rng.uniform(0.2, 2.0, size=(6, 4))
    pos_weight = np.array([0.5, 1.0, 3.0, 10.0])
    data.update(bce_logits_x=logits, bce_logits_y=labels, bce_logits_w=weight, bce_logits_pw=pos_weight)
    for reduction in REDUCTIONS:
        for name, kwargs in (
            ("plain", {}),
            ("weight", {"weight": t(weight)}),
            ("pos_weight", {"pos_weight": t(pos_weight)}),
            ("both", {"weight": t(weight), "pos_weight": t(pos_weight)}),
        ):
            loss = torch.nn.BCEWithLogitsLoss(reduction=reduction, **kwargs)(t(logits), t(labels))
            data[f"bce_logits_{name}_{reduction}"] = loss.numpy()

    # BCELoss: probabilities including exact 0 and 1 (where PyTorch clamps each log at -100).
    probs = rng.uniform(size=(5, 4))
    probs[0] = [0.0, 1.0, 0.0, 1.0]
    prob_labels = rng.uniform(size=(5, 4))
    prob_labels[0] = [1.0, 0.0, 0.0, 1.0]
    prob_weight = rng.uniform(0.2, 2.0, size=(5, 4))
    data.update(bce_p=probs, bce_y=prob_labels, bce_w=prob_weight)
    for reduction in REDUCTIONS:
        for name, kwargs in (("plain", {}), ("weight", {"weight": t(prob_weight)})):
            loss = torch.nn.BCELoss(reduction=reduction, **kwargs)(t(probs), t(prob_labels))
            data[f"bce_{name}_{reduction}"] = loss.numpy()
    p = t(probs).requires_grad_()
    torch.nn.BCELoss(reduction="sum")(p, t(prob_labels)).backward()
    data["bce_grad_sum"] = p.grad.numpy()

    # torchvision.ops.sigmoid_focal_loss (alpha < 0 disables alpha_t, our alpha=None), soft labels.
    focal_x = rng.normal(scale=3.0, size=(5, 4))
    focal_x[0] = [20.0, -20.0, 0.0, 5.0]
    focal_y = rng.uniform(size=(5, 4))
    focal_y[1] = [0.0, 1.0, 1.0, 0.0]
    data.update(focal_x=focal_x, focal_y=focal_y)
    for alpha in (0.25, -1.0):
        for gamma in (0.0, 0.5, 2.0):
            for reduction in REDUCTIONS:
                loss = torchvision.ops.sigmoid_focal_loss(
                    t(focal_x), t(focal_y), alpha=alpha, gamma=gamma, reduction=reduction
                )
                data[f"focal_a{alpha}_g{gamma}_{reduction}"] = loss.numpy()

    # Keras: BinaryFocalCrossentropy and BinaryCrossentropy with label smoothing, per sample (mean over -1).
    keras.config.set_floatx("float64")
    keras_x = rng.uniform(-8.0, 8.0, size=(5, 4))
    keras_y = (rng.uniform(size=(5, 4)) > 0.5).astype(np.float64)
    data.update(keras_x=keras_x, keras_y=keras_y)
    for smoothing in (0.0, 0.2):
        loss = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=smoothing, reduction=None)
        data[f"keras_bce_ls{smoothing}"] = keras.ops.convert_to_numpy(loss(keras_y, keras_x))
        for alpha, gamma in ((0.25, 2.0), (0.6, 1.0)):
            focal = keras.losses.BinaryFocalCrossentropy(
                apply_class_balancing=True,
                alpha=alpha,
                gamma=gamma,
                from_logits=True,
                label_smoothing=smoothing,
                reduction=None,
            )
            data[f"keras_focal_a{alpha}_g{gamma}_ls{smoothing}"] = keras.ops.convert_to_numpy(focal(keras_y, keras_x))

    # timm's AsymmetricLossMultiLabel (ASL): hard labels, per-class weight and pos_weight, both gradient modes.
    asl_x = rng.uniform(-6.0, 6.0, size=(6, 5)).astype(np.float32)
    asl_x[0, :2] = [-20.0, 30.0]
    asl_y = (rng.uniform(size=(6, 5)) > 0.6).astype(np.float32)
    asl_y[0, :2] = [1.0, 0.0]
    asl_w = rng.uniform(0.5, 2.0, size=5).astype(np.float32)
    asl_pw = rng.uniform(0.5, 4.0, size=5).astype(np.float32)
    data.update(asl_x=asl_x, asl_y=asl_y, asl_w=asl_w, asl_pw=asl_pw)
    for gamma_neg, gamma_pos, clip in ((4.0, 0.0, 0.05), (4.0, 1.0, 0.05), (2.0, 1.0, 0.0), (0.0, 0.0, 0.0)):
        for stop in (False, True):
            name = f"asl_n{gamma_neg}_p{gamma_pos}_c{clip}_stop{int(stop)}"
            kwargs = {"gamma_neg": gamma_neg, "gamma_pos": gamma_pos, "clip": clip}
            kwargs |= {"disable_torch_grad_focal_loss": stop, "weight": torch.from_numpy(asl_w)}
            kwargs["pos_weight"] = torch.from_numpy(asl_pw)
            for reduction in ("none", "batchmean"):
                asl = timm.loss.AsymmetricLossMultiLabel(reduction=reduction, **kwargs)
                x = torch.from_numpy(asl_x).requires_grad_()
                loss = asl(x, torch.from_numpy(asl_y))
                data[f"{name}_{reduction}"] = loss.detach().numpy()
                if reduction == "batchmean":
                    loss.backward()
                    data[f"{name}_grad"] = x.grad.numpy()

    data["versions"] = np.array(
        [
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, keras {keras.__version__}, "
            f"timm {timm.__version__}"
        ]
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT, **data)
    print(f"wrote {len(data)} arrays to {OUT} ({data['versions'][0]})")


if __name__ == "__main__":
    main()
