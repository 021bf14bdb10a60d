"""What XLA's optimised HLO keeps of jaxbce's double-word arithmetic, on any backend (used by
scripts/check_gpu_hlo.py for a GPU that is not attached, and by tests/test_hlo.py on the CPU).

The double-word routines compute rounding errors as differences such as ``(a + b) - a``, which an algebraic
simplifier would like to rewrite to ``b`` (the error becomes 0); jaxbce hides the rounded sums behind no-op
``reduce_precision`` ops. The evidence here is arithmetic: the optimised HLO of each routine and of each
loss's value and gradient still has every ``add``, ``subtract`` and ``multiply`` of its graph (counted with
fusion turned off, so that no op is counted twice), whether or not the barriers survived.
"""

import collections
import inspect
import re

import jax
import jax.numpy as jnp

from jaxbce import _double_word as dw
from jaxbce import _numerics
from jaxbce._registry import LOSSES

ARITHMETIC = ("add", "subtract", "multiply", "divide")
# The fusion passes of the CPU and GPU pipelines: turned off for counting (fused computations may repeat a
# producer in several consumers).
NO_FUSION = {
    "xla_disable_hlo_passes": "priority-fusion,fusion,multi_output_fusion,horizontal-loop-fusion,"
    "cpu-instruction-fusion,fusion-merger,sibling-fusion,loop-fusion"
}
# An instruction with an array result (not the scalar adds of a reduction's combiner, whose number depends on
# how a backend splits the reduction).
_OP = re.compile(r"= \w+\[[0-9][^\]]*\]\S* ([a-z][\w-]*)\(")


def _pair(a, b):
    return dw.Pair(a, b)


# name: (function of float arrays, number of arguments). Pairs are passed as two arrays.
ROUTINES = {
    "two_sum": (dw.two_sum, 2),
    "fast_two_sum": (dw.fast_two_sum, 2),
    "two_product": (dw.two_product, 2),
    "add": (lambda a, b, c, d: dw.add(_pair(a, b), _pair(c, d)), 4),
    "multiply": (lambda a, b, c, d: dw.multiply(_pair(a, b), _pair(c, d)), 4),
    "divide": (lambda a, b, c, d: dw.divide(_pair(a, b), _pair(c, d)), 4),
    "log": (lambda a, b: dw.log(_pair(a, b)), 2),
    "power_2.5": (lambda a, b: dw.power(_pair(a, b), 2.5), 2),
    "power_0.3": (lambda a, b: dw.power(_pair(a, b), 0.3), 2),
    "reduced_exp": (dw.reduced_exp, 2),
    "sigmoid_pair": (_numerics.sigmoid_pair, 1),
}


def _loss_value_and_grad(name):
    loss = LOSSES[name]
    parameters = inspect.signature(loss).parameters.values()
    count = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)

    def value_and_grad(*arrays):
        return jax.value_and_grad(lambda x, *rest: loss(x, *rest))(*arrays)

    return value_and_grad, count


def cases() -> dict:
    """Every double-word routine and every registered loss's value_and_grad in its first argument (default
    options, no optional arrays): name -> (function, number of array arguments)."""
    return {**ROUTINES, **{f"{name} value_and_grad": _loss_value_and_grad(name) for name in LOSSES}}


def op_counts(hlo_text: str) -> collections.Counter:
    """How many array instructions of each HLO op the text has, in every computation (fused ones included)."""
    return collections.Counter(_OP.findall(hlo_text))


def compiled_text(function, arguments: int, spec: jax.ShapeDtypeStruct, options: dict | None = None) -> str:
    """The optimised HLO of ``function`` compiled for the device (or topology) that ``spec`` is placed on."""
    return jax.jit(function).lower(*[spec] * arguments).compile(options or {}).as_text()


def cpu_spec(dtype=jnp.float32, size: int = 1024) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((size,), dtype)
