"""The registry of jaxbce's elementwise losses: each is declared once, by the :func:`loss` decorator on its
public function, and the pipeline, the tests, ``bench/accuracy.py`` and the docs read the declaration.

Why a decorator that runs the pipeline: every elementwise loss takes its arrays, then the shared keyword
arguments ``weight``, ``where``, ``ignore_label`` (where it has labels), ``axis`` and ``reduction``, and
differs only in its arrays' roles, its static options and its core. So a loss's body checks its own options
and returns its core specialised to them; the decorator binds the call to the signature, hands the arrays
(with the roles declared here) and the shared arguments to :func:`jaxbce._pipeline.compute_loss`, and
jit-compiles the result with the options static. The shared arguments are documented once, in
``SHARED_ARGUMENTS`` (appended to every docstring).
"""

import dataclasses
import functools
import inspect
import textwrap
from collections.abc import Callable, Mapping

import jax

from jaxbce._pipeline import Arg, Role, compute_loss, jit_loss

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


@dataclasses.dataclass(frozen=True)
class Loss:
    """One registered loss.

    Attributes:
      name: the public name, ``jaxbce.<name>``.
      function: the public (jitted) function.
      arrays: its array arguments and their roles, in call order: the positional ones, then the optional
        keyword arrays other than ``weight`` and ``where`` (``pos_weight``).
      takes_weight: whether it accepts the shared ``weight``.
      options: its static options, each with sample values for the tests (the default first).
      core: the elementwise core (a ``jax.custom_jvp`` function of the compute-dtype arrays).
      reference: the name of its 50-digit mpmath reference in ``tests/reference.py``.
      peers: the functions of other libraries it is compared against (``bench/accuracy.py``).
    """

    name: str
    function: Callable[..., jax.Array]
    arrays: tuple[tuple[str, Role], ...]
    takes_weight: bool
    options: Mapping[str, tuple]
    core: Callable[..., jax.Array]
    reference: str
    peers: tuple[str, ...]

    @property
    def positional(self) -> tuple[str, ...]:
        """The names of the positional array arguments."""
        parameters = inspect.signature(self.function).parameters
        return tuple(name for name, _ in self.arrays if parameters[name].kind is not inspect.Parameter.KEYWORD_ONLY)


LOSSES: dict[str, Loss] = {}


def loss(
    *,
    arrays: Mapping[str, Role],
    core: Callable[..., jax.Array],
    reference: str,
    options: Mapping[str, tuple] | None = None,
    peers: tuple[str, ...] = (),
) -> Callable[[Callable[..., Callable[..., jax.Array]]], Callable[..., jax.Array]]:
    """Registers an elementwise loss; see the module docs. The decorated body checks the static options and
    returns the core as a function of the arrays in the order of ``arrays`` (None where an optional one is
    not given)."""

    def register(body: Callable[..., Callable[..., jax.Array]]) -> Callable[..., jax.Array]:
        signature = inspect.signature(body)
        takes_weight = "weight" in signature.parameters

        @functools.wraps(body)
        def function(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            elementwise = body(*args, **kwargs)
            return compute_loss(
                elementwise,
                [Arg(name, values[name], role) for name, role in arrays.items()],
                weight=values.get("weight"),
                where=values["where"],
                axis=values["axis"],
                reduction=values["reduction"],
                ignore_label=values.get("ignore_label"),
            )

        function.__doc__ = _with_shared_arguments(body.__doc__, signature)
        public = jit_loss(function)
        LOSSES[body.__name__] = Loss(
            name=body.__name__,
            function=public,
            arrays=tuple(arrays.items()),
            takes_weight=takes_weight,
            options=dict(options or {}),
            core=core,
            reference=reference,
            peers=peers,
        )
        return public

    return register


def _with_shared_arguments(doc: str, signature: inspect.Signature) -> str:
    """``doc`` with the shared arguments that ``signature`` takes added to the end of its Args section."""
    lines = [
        textwrap.fill(f"{name}: {text}", 112, initial_indent=" " * 6, subsequent_indent=" " * 8)
        for name, text in SHARED_ARGUMENTS.items()
        if name in signature.parameters
    ]
    head, marker, tail = doc.partition("\n    Returns:")
    return head.rstrip("\n") + "\n" + "\n".join(lines) + "\n" + marker + tail
