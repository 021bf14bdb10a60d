"""What the tests need from JAX under one name on every version they run on, from the oldest that pyproject.toml
declares (0.7.0, ``make test-oldest-jax``) to the newest."""

import jax
import jax.experimental

# The mesh context manager: jax.set_mesh arrived after 0.7.0, which has jax.sharding.use_mesh (there,
# jax.sharding.set_mesh is a plain setter).
set_mesh = jax.set_mesh if hasattr(jax, "set_mesh") else jax.sharding.use_mesh

# Float64 in a scope: jax.enable_x64 arrived after 0.7.0, which has jax.experimental.enable_x64.
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64
