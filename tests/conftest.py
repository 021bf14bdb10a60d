"""Test session setup: 8 CPU devices (pmap variants and sharded meshes run on any machine) and hypothesis
profiles: "ci" (the default, 2,000 examples per property), "thorough" (20,000) and "dev" (200)."""

import chex
from hypothesis import HealthCheck, settings

chex.set_n_cpu_devices(8)

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
# "ci" is derandomized: every run checks the same 2,000 examples per property, so that a green run stays
# green; "thorough" explores new ones on each run.
settings.register_profile("ci", max_examples=2000, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=20000, **_COMMON)
settings.register_profile("dev", max_examples=200, **_COMMON)
settings.load_profile("ci")
