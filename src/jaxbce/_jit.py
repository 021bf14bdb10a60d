"""The jit wrapper of every public function: how a call is checked, keyed and compiled."""

import contextvars
import functools
import inspect
import typing
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import sparse

from jaxbce._arguments import is_python_number
from jaxbce._value_checks import value_checks, value_checks_enabled

F = typing.TypeVar("F", bound=Callable)


def jit_loss(
    *,
    static: tuple[str, ...],
    static_or_array: tuple[str, ...] = (),
    trees: tuple[str, ...] = (),
    hint: Callable[[dict], typing.Any] | None = None,
) -> Callable[[F], F]:
    """``jax.jit`` of a public function, the one rule by which every jaxbce function is called and compiled.

    ``static`` names its static options (``axis``, ``reduction``, ``gamma``, ``chunk_size``, ...): they take
    Python and NumPy scalars alike (NumPy ones become Python numbers), and a traced or array value for one is a
    ``TypeError`` saying that it must be a Python number. ``static_or_array`` names the options that are static
    while given as a Python number or None (one compilation per value) and traced when given an array (the focal
    loss's ``alpha``). ``trees`` names the parameters that are pytrees of arrays (a layer's parameters, an
    optimizer's state), traced as they are. Every other parameter is an array: None where its annotation does
    not admit None, and a string or other non-array, are a ``TypeError`` naming the function and the argument.
    Too many positional arguments are a ``TypeError`` that names the keyword-only ones. Whether value checks are
    on (:func:`value_checks`, read when the call is traced) is part of the cache key, so that :func:`checked`
    checks whatever was traced before. ``hint`` reads what only the concrete arguments can tell (the
    sharding of an array passed from outside ``jit``) from the call's arguments by name, before ``jit`` turns
    them into tracers: its hashable result is part of the cache key, and :func:`current_hint` returns it
    while the function is traced (None for a traced argument, or without a ``hint``).
    """

    def wrap(loss: F) -> F:
        name = loss.__name__
        signature = inspect.signature(loss)
        parameters = signature.parameters
        options = {
            option: p
            for option, p in parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        undeclared = (set(static) | set(static_or_array) | set(trees)) - set(options)
        if undeclared:
            raise TypeError(f"jit_loss: {name}() has no parameters {sorted(undeclared)}")
        arrays = {option: p for option, p in options.items() if option not in static and option not in trees}
        positional = [option for option, p in options.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        keywords = [option for option, p in options.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]

        def traced(*, checks_on, hinted, **kwargs):  # every argument by name: static ones may be given by position
            tokens = _HINT.set(hinted), _FUNCTION.set(f"{name}()")
            try:
                with value_checks(checks_on):
                    return loss(**kwargs)
            finally:
                _FUNCTION.reset(tokens[1])
                _HINT.reset(tokens[0])

        @functools.cache
        def jitted(static_names: tuple[str, ...]):
            return jax.jit(traced, static_argnames=(*static_names, "checks_on", "hinted"))

        @functools.wraps(loss)
        def call(*args, **kwargs):
            if len(args) > len(positional):
                advice = f"; the others are keyword-only: pass them by name, e.g. {keywords[0]}=..." if keywords else ""
                raise TypeError(
                    f"{name}() takes {len(positional)} positional arguments ({', '.join(positional)}) but "
                    f"{len(args)} were given{advice}"
                )
            unknown = set(kwargs) - set(options)
            if unknown:
                raise TypeError(
                    f"{name}() got unexpected keyword arguments {sorted(unknown)}; it takes {list(options)}"
                )
            try:
                kwargs = signature.bind(*args, **kwargs).arguments  # the given arguments, by name
            except TypeError as error:  # an argument given twice, or a required one missing
                raise TypeError(f"{name}(): {error}") from None
            for option, value in kwargs.items():
                if option in arrays:
                    _check_array_argument(name, option, arrays[option], value)
                elif option in static:
                    kwargs[option] = _static_option(name, option, value)
            scalars = tuple(
                option
                for option in static_or_array
                if option in kwargs and (kwargs[option] is None or is_python_number(kwargs[option]))
            )
            hinted = None if hint is None else hint(kwargs)
            return jitted((*static, *scalars))(checks_on=value_checks_enabled(), hinted=hinted, **kwargs)

        return call

    return wrap


_HINT: contextvars.ContextVar = contextvars.ContextVar("jaxbce_hint", default=None)
_FUNCTION: contextvars.ContextVar = contextvars.ContextVar("jaxbce_function", default="jaxbce")


def current_hint():
    """The ``hint`` of the call being traced (see :func:`jit_loss`)."""
    return _HINT.get()


def current_function() -> str:
    """The public function being traced, as ``"name()"``, for the errors raised below it."""
    return _FUNCTION.get()


def _check_array_argument(function: str, option: str, parameter: inspect.Parameter, value) -> None:
    """A ``TypeError`` naming the function and the argument for None where an array is required, and for a value
    that is no array (a string, a dict, ...); NumPy and Python scalars and (nested) lists are arrays."""
    if value is None:
        if type(None) not in typing.get_args(parameter.annotation):
            raise TypeError(f"{function}(): {option} is required: an array, got None")
        return
    array_like = (jax.Array, sparse.JAXSparse, np.ndarray, np.generic, int, float, complex, bool, list, tuple)
    convertible = hasattr(value, "__jax_array__") or hasattr(value, "__array__")  # pandas, torch CPU tensors
    if isinstance(value, str | bytes) or not (isinstance(value, array_like) or convertible):
        raise TypeError(f"{function}(): {option} must be an array, got {type(value).__name__}")


def _static_option(function: str, option: str, value):
    """A static option's value with NumPy scalars as Python numbers; a ``TypeError`` for a traced or array value,
    which cannot be static."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, jax.Array | np.ndarray):
        kind = "a traced value" if isinstance(value, jax.core.Tracer) else f"an array of shape {np.shape(value)}"
        raise TypeError(
            f"{function}(): {option} is a static option and must be a Python number (or a NumPy scalar), got "
            f"{kind}; compilation specialises on its value, so pass it as a number, not as a jnp array or from "
            "inside a traced function"
        )
    return value
