"""The registry of jaxbce's elementwise losses: :func:`loss` declares a public loss's static options, documents the
shared arguments it takes, jit-compiles it (:func:`jaxbce._jit.jit_loss`) and records it in :data:`LOSSES`,
which the tests, the scripts and the docs iterate over, so that a new loss cannot skip them.

A loss's body is the whole path from its arguments to its value: it checks its static options, picks its
elementwise core and hands its arrays (named, with their roles) and the shared arguments ``weight``, ``where``,
``ignore_label``, ``axis`` and ``reduction`` to :func:`jaxbce._pipeline.compute_loss`.
"""

import inspect
import textwrap
from collections.abc import Callable

import jax

from jaxbce._jit import jit_loss

SHARED_ARGUMENTS = {
    "weight": "optional non-negative weight broadcastable to the first argument's shape ``S`` (PyTorch's "
    "``weight``): multiplies each element's loss; a zero weight removes its element even where the loss is "
    "infinite.",
    "where": "optional bool mask broadcastable to ``S``; False elements contribute exactly 0 to the value and to "
    "every gradient, even if their inputs are NaN or inf.",
    "ignore_label": "static int or float, or None: elements whose label equals it (the -1 / 255 conventions of "
    "partially labelled data) are masked as ``where=False`` masks them, and exempt from the labels value check.",
    "axis": "axes to reduce (None: all; an int or a tuple). With ``reduction='mean', axis=-1`` you get one loss "
    "per example.",
    "reduction": "``'none'`` (elementwise, 0 where masked), ``'sum'``, ``'mean'`` (default; divides by the number "
    "of kept elements), ``'weighted_mean'`` (divides by the sum of kept weights) or ``'batchmean'`` (divides by "
    "the number of examples along the leading axis that keep at least one element: the sum over classes, "
    "averaged over examples; not with ``axis``). A mean over nothing is 0.",
}
# The shared arguments that are static (the others are arrays).
SHARED_STATIC = ("ignore_label", "axis", "reduction")

LOSSES: dict[str, Callable[..., jax.Array]] = {}


def loss(
    *, static: tuple[str, ...] = (), static_or_array: tuple[str, ...] = ()
) -> Callable[[Callable[..., jax.Array]], Callable[..., jax.Array]]:
    """Registers an elementwise loss whose own static options are ``static`` (and ``static_or_array``: static as
    Python numbers, traced as arrays; see :func:`jaxbce._jit.jit_loss`); the shared static arguments it takes
    are added."""

    def register(function: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        parameters = inspect.signature(function).parameters
        function.__doc__ = _with_shared_arguments(function.__doc__, parameters)
        shared = tuple(name for name in SHARED_STATIC if name in parameters)
        public = jit_loss(static=(*static, *shared), static_or_array=static_or_array)(function)
        LOSSES[function.__name__] = public
        return public

    return register


def _with_shared_arguments(doc: str, parameters) -> str:
    """``doc`` with the shared arguments among ``parameters`` added to the end of its Args section."""
    lines = [
        textwrap.fill(f"{name}: {text}", 112, initial_indent=" " * 6, subsequent_indent=" " * 8)
        for name, text in SHARED_ARGUMENTS.items()
        if name in parameters
    ]
    head, marker, tail = doc.partition("\n    Returns:")
    return head.rstrip("\n") + "\n" + "\n".join(lines) + "\n" + marker + tail
