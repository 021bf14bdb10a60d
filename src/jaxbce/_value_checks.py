"""Value checks (``jax.experimental.checkify``), opt-in at trace time: :func:`value_checks` turns them on for what
is traced inside it, :func:`checked` runs a function with them and raises on the first bad value."""

import contextlib
import contextvars
import functools
import math
import typing
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxbce._arguments import Role

T = typing.TypeVar("T")

# Value checks are opt-in at trace time: a registered ``checkify.debug_check`` changes nothing in the compiled
# program, but it gives the jitted function a side effect, and JAX dispatches functions with effects on a
# slow path, whose fixed cost per call exceeds the whole loss of a small batch.
_VALUE_CHECKS = contextvars.ContextVar("jaxbce_value_checks", default=False)


def value_checks_enabled() -> bool:
    return _VALUE_CHECKS.get()


@contextlib.contextmanager
def value_checks(enabled: bool = True) -> Iterator[None]:
    """Context in which jaxbce losses that are traced register their checkify value checks.

    The checks (labels and probabilities outside [0, 1], negative ``weight`` or ``pos_weight``, NaN where
    ``where`` keeps the element) only report under ``jax.experimental.checkify``, and only in losses traced
    inside this context: what counts is when a function is traced, not when it runs. :func:`checked` does
    both for you; in your own jitted step::

        with jaxbce.value_checks():
            step = jax.jit(checkify.checkify(train_step))
            error, out = step(params, batch)  # traced here, with the checks
        error.throw()

    Outside the context no check is registered, and the compiled program and its dispatch cost are those of
    the loss alone.
    """
    token = _VALUE_CHECKS.set(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def register_value_checks(name: str, role: Role, array: jax.Array | None, keep: jax.Array | None) -> None:
    """Checks on the values of ``array`` (None: none), registered inside :func:`value_checks`; they report under
    checkify. ``keep`` excuses the elements it masks."""
    if array is None or not value_checks_enabled() or array.size == 0:
        return
    if role is Role.LABELS and array.dtype == np.bool_:
        return
    checks = [(~jnp.isnan(array), "must not be NaN")] if jnp.issubdtype(array.dtype, jnp.floating) else []
    if role in (Role.LABELS, Role.PROBABILITIES, Role.FRACTION):
        checks.append((jnp.isnan(array) | ((array >= 0) & (array <= 1)), "must be in [0, 1]"))
    elif role is Role.NON_NEGATIVE:
        checks.append((jnp.isnan(array) | (array >= 0), "must be non-negative"))
    # The mask excuses elements of arrays that have the full shape; a smaller array (a per-class pos_weight)
    # is a parameter, checked whole.
    if keep is not None and jnp.broadcast_shapes(keep.shape, array.shape) != array.shape:
        keep = None
    for ok, requirement in checks:
        check_values(name, array, ok if keep is None else ok | ~keep, requirement)


def check_values(name: str, array: jax.Array, ok: jax.Array, requirement: str) -> None:
    """A checkify check that ``ok`` holds everywhere, reporting the first offending value of ``array`` and its
    index: ``f"{name} {requirement}; got {value} at index {index}"``."""
    value, index = _first_offender(array, ok)
    checkify.debug_check(jnp.all(ok), f"{name} {requirement}; got {{}} at index {{}}", value, index)


def _first_offender(array: jax.Array, ok: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The value and the index of the first element (row-major) where ``ok`` is False.

    Reductions over a broadcast linear index, with no reshape or dynamic indexing, so that it traces for arrays
    sharded over any mesh (explicit sharding rejects a dynamic slice of a sharded dimension).
    """
    ok = jnp.broadcast_to(ok, array.shape)
    strides = [math.prod(array.shape[d + 1 :]) for d in range(array.ndim)]
    linear = sum(
        (jax.lax.broadcasted_iota(jnp.int32, array.shape, d) * int(s) for d, s in enumerate(strides)),
        start=jnp.zeros(array.shape, jnp.int32),
    )
    first = jnp.min(jnp.where(ok, array.size, linear))
    value = jnp.sum(jnp.where(linear == first, array, jnp.zeros((), array.dtype)))
    index = jnp.stack(jnp.unravel_index(first, array.shape)) if array.ndim else first
    return value, index


def checked(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` with jaxbce's value checks turned on: raises on the first bad value instead of returning NaN.

    Checks labels and probabilities outside [0, 1], negative ``weight`` or ``pos_weight``, and NaN in any of
    them or in the logits, where ``where`` keeps the element. ``checked`` traces ``fn`` inside
    :func:`value_checks` and under ``checkify`` and raises ``checkify.JaxRuntimeError`` naming the argument,
    the offending value and its index, e.g. ``labels must be in [0, 1]; got 2.0 at index [1 1]``.

    ``fn`` may be a jaxbce function or any function that calls one (a whole train step, jitted or not). Every
    jaxbce function keys its compilation on whether checks are on, so ``checked`` checks it even after it was
    called without. ``checked`` raises in Python, so it goes outside ``jax.jit``, ``vmap`` and the like, never
    inside (that is a ``TypeError`` saying so); to keep the checks inside your own jitted step, trace it with
    ``checkify`` inside :func:`value_checks`. Without ``checked`` or :func:`value_checks` no check is
    registered: the losses compile and dispatch as if the checks did not exist.

    Example:
      >>> import jax.numpy as jnp, jaxbce
      >>> loss = jaxbce.checked(jaxbce.binary_cross_entropy_with_logits)
      >>> loss(jnp.zeros(3), jnp.array([0.0, 1.0, 2.0]))
      Traceback (most recent call last):
      ...
      jax._src.checkify.JaxRuntimeError: labels must be in [0, 1]; got 2.0 at index [2]...
    """
    checkified = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with value_checks():
            error, out = checkified(*args, **kwargs)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(error)):
            raise TypeError(
                f"jaxbce.checked({getattr(fn, '__name__', fn)}) was called inside a JAX transformation (jax.jit, "
                "vmap, grad, ...), where it cannot raise. Put checked outside, jax.jit(fn) inside it: "
                "jaxbce.checked(jax.jit(fn)); or, to keep the checks in your jitted step, trace it with checkify "
                "inside jaxbce.value_checks():\n"
                "    with jaxbce.value_checks():\n"
                "        error, out = jax.jit(checkify.checkify(step))(*args)\n"
                "    error.throw()"
            )
        error.throw()
        return out

    return run
