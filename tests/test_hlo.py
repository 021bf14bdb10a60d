"""The double-word arithmetic survives XLA's CPU pipeline: the optimised HLO of each elementary routine
(compiled with fusion off, so that no op is counted twice) keeps every add, subtract, multiply and no-op
reduce_precision of its graph. The GPU and TPU counterparts, compiled for an H100 and a TPU v5e without
either, are ``make check-gpu-hlo`` and ``make check-tpu-hlo`` (scripts/check_gpu_hlo.py); their committed
results are checked here to cover every registered loss and to have passed."""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from jax_compat import enable_x64
from jaxbce._registry import LOSSES

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import hlo_evidence  # noqa: E402

# The routines whose graphs XLA has nothing to simplify in (no constants, no repeated subexpressions), so the
# counts must be equal; the others (log, power, sigmoid_pair) fold constants legitimately.
ELEMENTARY = ("two_sum", "fast_two_sum", "two_product", "add", "multiply", "divide", "reduced_exp")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ELEMENTARY)
def test_elementary_routines_keep_every_operation_on_cpu(name, dtype):
    function, arguments = hlo_evidence.ROUTINES[name]
    with enable_x64(dtype == np.float64):
        lowered = jax.jit(function).lower(*[hlo_evidence.cpu_spec(dtype)] * arguments)
        before = hlo_evidence.op_counts(lowered.as_text(dialect="hlo"))
        after = hlo_evidence.op_counts(lowered.compile(hlo_evidence.NO_FUSION).as_text())
    for op in (*hlo_evidence.ARITHMETIC, "reduce-precision"):
        assert after[op] == before[op], (op, before, after)
    assert before["subtract"] > 0


def test_every_loss_keeps_its_barriers_on_cpu():
    """Each registered loss's value_and_grad still has no-op reduce_precision barriers after optimisation."""
    cases = hlo_evidence.cases()
    for name in LOSSES:
        function, arguments = cases[f"{name} value_and_grad"]
        text = jax.jit(function).lower(*[hlo_evidence.cpu_spec()] * arguments).compile().as_text()
        assert hlo_evidence.op_counts(text)["reduce-precision"] > 0, name


@pytest.mark.parametrize(
    ("result", "dtypes"), [("gpu-hlo-h100.json", ("float32", "float64")), ("tpu-hlo-v5e.json", ("float32",))]
)
def test_committed_device_evidence_covers_every_loss_and_passed(result, dtypes):
    evidence = json.loads((ROOT / "bench" / "results" / result).read_text())
    assert evidence["failures"] == []
    for dtype in dtypes:
        cases = evidence["dtypes"][dtype]["cases"]
        assert set(cases) == set(hlo_evidence.cases()), "rerun make check-gpu-hlo / check-tpu-hlo"
        assert {f"{name} value_and_grad" for name in LOSSES} <= set(cases)
        for row in cases.values():
            assert row["arithmetic, device"]["subtract"] >= row["arithmetic, CPU"]["subtract"]
            assert row.get("fma in PTX", 0) <= row.get("fma in the libdevice functions called", 0)
