"""The test table (``loss_table.py``) covers every registered loss, and each row matches its function."""

import inspect
import typing

import jax
import pytest

import jaxbce
from jaxbce._registry import LOSSES as REGISTERED
from loss_table import LOSSES, UNLISTED

_SHARED = ("weight", "where", "ignore_label", "axis", "reduction")


def test_every_registered_loss_has_a_row():
    assert not UNLISTED, f"add rows to tests/loss_table.py for {UNLISTED}"
    assert set(LOSSES) == set(REGISTERED)
    assert set(REGISTERED) <= set(jaxbce.__all__)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_row_matches_the_signature(name):
    loss = LOSSES[name]
    parameters = inspect.signature(loss.function).parameters
    # The array parameters: those whose annotation admits an array (jax.typing.ArrayLike), but weight and where.
    arrays = [p for p, v in parameters.items() if p not in _SHARED and jax.Array in typing.get_args(v.annotation)]
    assert [array for array, _ in loss.arrays] == arrays
    for option, samples in loss.options.items():
        assert parameters[option].default == samples[0], f"{option}: the first sample is the default"
