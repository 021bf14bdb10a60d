"""Test session setup: 8 CPU devices (pmap variants and sharded meshes run on any machine) and hypothesis
profiles: "ci" (the default: 100 fixed examples per property), "thorough" (2,000 new ones per property on each
run: ``make test-thorough``) and "dev" (30)."""

import chex
from hypothesis import HealthCheck, settings

chex.set_n_cpu_devices(8)

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
