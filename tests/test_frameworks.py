"""The framework recipes of docs/migration.md (Keras 3, Flax NNX value checks, Equinox, the fused classifier update
in Flax NNX and in Equinox), executed as written, and what they promise checked."""

import subprocess
import sys

import numpy as np
import pytest

import doc_blocks


def _section(title: str) -> dict:
    """Runs the python blocks of the migration guide's section ``title`` in one namespace."""
    return doc_blocks.run("docs/migration.md", f"## {title}")


def test_keras_recipe_compiles_fits_and_reloads_in_a_new_process(tmp_path, monkeypatch):
    """The section as written (it saves the model in the working directory); then its last block, the reload, in a
    fresh Python process, and the same without ``import jaxbce.keras``, which fails as the guide says."""
    monkeypatch.chdir(tmp_path)
    n = _section("Keras 3")
    assert np.isfinite(n["keras_loss"])
    reload = doc_blocks.blocks("docs/migration.md", "## Keras 3")[1]
    check = "\nassert type(reloaded.loss).__name__ == 'BinaryCrossentropy', reloaded.loss"
    subprocess.run([sys.executable, "-c", reload + check], cwd=tmp_path, check=True, capture_output=True)
    unregistered = reload.replace("import jaxbce.keras", "")
    failed = subprocess.run([sys.executable, "-c", unregistered], cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode != 0
    assert "Could not locate class 'BinaryCrossentropy'" in failed.stderr


def test_nnx_recipe_reports_the_bad_label_and_keeps_the_model_usable():
    pytest.importorskip("flax")
    import jax.numpy as jnp

    import jaxbce

    n = _section("Flax NNX: value checks")
    assert n["message"].startswith("labels must be in [0, 1]; got 2.0 at index [0 2]")
    good = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    error, loss = n["checked_step"](n["model"], n["optimizer"], n["x"], good)  # the model is still usable
    assert error.get() is None
    assert np.isfinite(loss)
    # Still checked outside the context: the step was traced with the checks.
    error, _ = n["checked_step"](n["model"], n["optimizer"], n["x"], n["bad_labels"])
    assert error.get() is not None
    # What the docs warn of: a step first traced outside value_checks() stays without them.
    from flax import nnx
    from jax.experimental import checkify

    unchecked_first = nnx.jit(nnx.checkify(n["train_step"], errors=checkify.user_checks))
    unchecked_first(n["model"], n["optimizer"], n["x"], good)
    with jaxbce.value_checks():
        error, _ = unchecked_first(n["model"], n["optimizer"], n["x"], n["bad_labels"])
    assert error.get() is None


def test_equinox_recipe_trains():
    pytest.importorskip("equinox")
    n = _section("Equinox")
    losses = n["losses"]
    assert losses[-1] < losses[0] / 2, losses[::10]


@pytest.mark.parametrize(
    "title", ["Flax NNX: the fused classifier update", "Equinox: the fused classifier update"], ids=["nnx", "equinox"]
)
def test_fused_update_recipes_train(title):
    """A body trained through its vjp and a head (1,009 classes, a prime) updated by the fused step: the loss falls
    to a fifth, and the layer holds the updated head, in its own layout."""
    n = _section(title)
    losses = n["losses"]
    assert losses[-1] < losses[0] / 5, losses[::5]
    if "NNX" in title:
        from flax import nnx

        kernel, initial = n["model"].head.kernel[...], n["Model"](nnx.Rngs(0)).head.kernel[...]
        assert kernel.shape == (32, n["CLASSES"])
    else:
        import equinox as eqx

        kernel, initial = n["model"].head.weight, eqx.nn.Linear(32, n["CLASSES"], key=n["head_key"]).weight
        assert kernel.shape == (n["CLASSES"], 32)
    assert np.abs(np.asarray(kernel) - np.asarray(initial)).max() > 1e-3
