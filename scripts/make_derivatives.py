"""Regenerate tests/data/derivatives.npz: the 50-digit mpmath derivatives that tests/test_derivatives.py compares
the package against.

For every case of that test (loss, static options, dtype), at every point of its grid, the derivatives of orders
1 and 2 in each array argument and the weight, from ``tests/reference.py`` (``mpmath.diff`` of formulas written
independently of the package), rounded once to float64; NaN where the package promises no mathematical
derivative (``_compared``). About 30,000 ``mpmath.diff`` calls: a few minutes. The test recomputes a sample of the
stored values with mpmath on every run, so the file cannot drift from the references.

    python scripts/make_derivatives.py
"""

import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_derivatives  # noqa: E402  (tests/test_derivatives.py: its cases, grids and reference calls)

OUT = ROOT / "tests" / "data" / "derivatives.npz"


def main() -> None:
    data = {}
    for case in test_derivatives.CASES:
        name, options, dtype = case.values
        points, exact = test_derivatives.exact_derivatives(name, options, dtype)
        data[f"{case.id}/points"] = points
        data[f"{case.id}/exact"] = exact
        print(case.id, points.shape[0], "points", flush=True)
    np.savez_compressed(OUT, **data)


if __name__ == "__main__":
    main()
