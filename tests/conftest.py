"""Test session setup: 8 CPU devices, so that pmap variants and sharded meshes run on any machine."""

import chex

chex.set_n_cpu_devices(8)
