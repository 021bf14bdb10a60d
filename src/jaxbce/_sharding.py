"""Shardings: what the losses do under Explicit mesh axes (``jax.make_mesh``'s default), where an array's
sharding is part of its type. A no-op under Auto axes, inside ``shard_map`` and without a mesh."""

import math
import typing
from collections.abc import Callable

import jax
from jax.sharding import AxisType

T = typing.TypeVar("T")


def explicit_spec(array: jax.Array) -> tuple | None:
    """The partition spec of ``array``'s type, one entry per dimension, where it is sharded over Explicit mesh
    axes (what ``jax.make_mesh`` creates by default); None under Auto axes, inside ``shard_map`` or with no mesh,
    where shardings are not part of the types."""
    sharding = getattr(jax.typeof(array), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or AxisType.Explicit not in mesh.axis_types:
        return None
    return (*sharding.spec, *[None] * (array.ndim - len(sharding.spec)))


def shards_along(array: jax.Array, axis: int) -> int | None:
    """How many shards ``array`` is split into along ``axis`` where that is part of its type (Explicit mesh
    axes), 1 inside a ``shard_map`` whose every mesh axis is manual (the arrays are local), else None: under
    Auto axes inside ``jit`` the sharding is chosen after tracing."""
    spec = explicit_spec(array)
    if spec is not None:
        entry = spec[axis]
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        return math.prod(jax.typeof(array).sharding.mesh.shape[name] for name in names)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and all(kind == AxisType.Manual for kind in mesh.axis_types):
        return 1
    return None


def devices_that_could_shard() -> int:
    """The most shards an array's axis could be split into here: the devices of the mesh's axes that are not
    manual, or every device without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return jax.device_count()
    kinds = zip(mesh.axis_names, mesh.axis_types, strict=True)
    return math.prod(mesh.shape[name] for name, kind in kinds if kind != AxisType.Manual)


def sharded_like(array: jax.Array, reference: jax.Array) -> jax.Array:
    """``array`` with the sharding of ``reference`` along the dimensions that broadcasting aligns (from the
    right), size-1 dimensions replicated: a no-op except under Explicit mesh axes.

    Why. A data pipeline hands labels, masks and weights over replicated or sharded over the examples only,
    while the logits are sharded over examples and classes. Under Explicit axes the sharding is part of an
    array's type, and a select (the cores choose between two forms by the sign of the logits, the pipeline
    masks with ``where``) needs all its operands sharded alike: so every argument is brought to the first
    argument's sharding once, here. From replicated or from a sharding over fewer axes this is a local slice,
    with no communication.
    """
    spec = explicit_spec(reference)
    if spec is None or array.ndim > reference.ndim:
        return array
    leading = reference.ndim - array.ndim
    aligned = zip(spec[leading:], reference.shape[leading:], array.shape, strict=True)
    target = tuple(axes if size == own else None for axes, size, own in aligned)
    if explicit_spec(array) == target:
        return array
    return jax.sharding.reshard(array, _on_mesh_of(reference, target))


def _on_mesh_of(array: jax.Array, spec: tuple) -> jax.sharding.NamedSharding:
    """``spec`` on the mesh of ``array``'s type: a sharding that needs no mesh context (``jax.set_mesh``), as
    arrays sharded before ``jit`` come without one."""
    return jax.sharding.NamedSharding(jax.typeof(array).sharding.mesh, jax.sharding.PartitionSpec(*spec))


def with_auto_axes(fn: Callable[..., T], *args, out_spec: tuple = (), out_specs=None) -> T:
    """``fn(*args)`` with the Explicit mesh axes of ``args`` made Auto for its duration; the result is sharded
    as ``out_spec`` says (or, for a result of several arrays, as the pytree ``out_specs`` of ``PartitionSpec``
    says). A plain call where no argument is sharded over Explicit axes.

    Why. The fused losses visit the classes (or texts) in chunks: a loop that slices the class axis and
    carries gradients across steps. Sharding-in-types rejects a dynamic slice of a sharded dimension, while
    GSPMD, given the same arrays as Auto axes, partitions each chunk across the class shards without moving
    the kernel (the groups of classes of ``_chunks``). So under Explicit axes the loop runs as under Auto axes,
    with the inputs' shardings as its starting point.
    """
    explicit = [leaf for leaf in jax.tree.leaves(args) if explicit_spec(leaf) is not None]
    if not explicit:
        return fn(*args)
    if out_specs is None:
        out_sharding = _on_mesh_of(explicit[0], out_spec)
    else:
        is_spec = lambda leaf: isinstance(leaf, jax.sharding.PartitionSpec)  # noqa: E731
        out_sharding = jax.tree.map(lambda spec: _on_mesh_of(explicit[0], tuple(spec)), out_specs, is_leaf=is_spec)
    return jax.sharding.auto_axes(fn, out_sharding=out_sharding)(*args)
