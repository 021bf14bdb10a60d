"""The test session's devices and meshes, shared by every test module.

A session has 8 CPU devices (sharded meshes run on any machine), or one with ``JAXBCE_TEST_DEVICES=1``: the
layout that every single-GPU user gets (``make test`` runs the fused losses' tests both ways). Tests that need
8 devices are marked ``eight_devices`` and deselected in a one-device session (tests/conftest.py).
"""

import os

import jax
import pytest
from jax.sharding import AxisType

DEVICES = int(os.environ.get("JAXBCE_TEST_DEVICES", "8"))
eight_devices = pytest.mark.eight_devices


def mesh(axis_type: AxisType = AxisType.Explicit, shape=(4, 2), names=("data", "model")) -> jax.sharding.Mesh:
    """A mesh over the first 8 devices, ``("data", "model")`` of ``(4, 2)`` by default, with every axis of
    ``axis_type`` (Explicit, as ``jax.make_mesh`` gives them, unless told)."""
    devices = jax.devices() if jax.device_count() >= 8 else jax.devices("cpu")
    if len(devices) < 8:
        pytest.fail("a sharded test needs 8 devices: mark it eight_devices (tests/devices.py)")
    return jax.make_mesh(shape, names, devices=devices[:8], axis_types=(axis_type,) * len(shape))
