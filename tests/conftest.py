"""Test session setup: 8 CPU devices, or one with JAXBCE_TEST_DEVICES=1 (tests/devices.py), and hypothesis
profiles: "ci" (the default: 100 fixed examples per property), "thorough" (2,000 new ones per property on each
run: ``make test-thorough``) and "dev" (30)."""

import os

import chex
from hypothesis import HealthCheck, settings

from devices import DEVICES

chex.set_n_cpu_devices(DEVICES)
# Keras 3 runs on JAX here: a test that imports keras first in a worker must not pick another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
# "ci" is derandomized: every run checks the same examples, so that a green run stays green. Its size is set by
# what the examples find: the properties' draws are a loss, a dtype, a shape and values from short lists of
# special values (tests/test_properties.py), so 100 examples visit every loss in every dtype and shape; the
# former default of 2,000 fixed examples per property found no failure, and took 10 of the suite's 20 minutes.
# "thorough" explores new examples on each run and is run on demand (make test-thorough).
settings.register_profile("ci", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=2000, **_COMMON)
settings.register_profile("dev", max_examples=30, **_COMMON)
settings.load_profile("ci")

# The longest tests (measured with --durations), run first: pytest-xdist hands tests to its two workers in order,
# and one of these started last would keep a worker busy for a minute after the other has finished.
_LONGEST_FIRST = (
    "test_notebooks.py::test_notebook_executes",
    "test_properties.py::",
    "test_packaging.py::",
)


def pytest_collection_modifyitems(config, items):
    if DEVICES < 8:  # a one-device session: the sharded tests are not run (deselected, not skipped)
        deselected = [item for item in items if item.get_closest_marker("eight_devices")]
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("eight_devices")]

    def rank(item):
        return next((i for i, name in enumerate(_LONGEST_FIRST) if name in item.nodeid), len(_LONGEST_FIRST))

    items.sort(key=rank)  # stable: the order within each group is the collection order
