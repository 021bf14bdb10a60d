"""The framework recipes of docs/migration.md (Keras 3, Flax NNX value checks, Equinox), executed as written, and
what they promise checked."""

import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _section(title: str) -> dict:
    """Runs the python blocks of the migration guide's section ``title`` in one namespace."""
    text = (ROOT / "docs" / "migration.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)\n```", text[start : None if end < 0 else end], flags=re.DOTALL)
    assert blocks, title
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, f"docs/migration.md ({title})", "exec"), namespace)
    return namespace


def test_keras_recipe_compiles_and_fits():
    pytest.importorskip("keras")
    n = _section("Keras 3")
    assert np.isfinite(n["keras_loss"])


def test_nnx_recipe_reports_the_bad_label_and_keeps_the_model_usable():
    pytest.importorskip("flax")
    import jax.numpy as jnp

    import jaxbce

    n = _section("Flax NNX")
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
