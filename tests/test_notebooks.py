"""The notebooks: each source (notebooks/NN_name.py, a jupytext percent script) executes from top to bottom
without an error and shows a plot, and the committed NN_name.ipynb carries exactly its cells (rewrite them with
``python scripts/build_notebooks.py``)."""

import pathlib
import sys

import jupytext
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import build_notebooks  # noqa: E402

SOURCES = build_notebooks.SOURCES


def _cells(notebook):
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def test_there_are_notebooks():
    assert len(SOURCES) >= 4
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == [p.stem for p in SOURCES]


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_committed_notebook_matches_its_source(source):
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert _cells(committed) == _cells(jupytext.read(source))
    outputs = [o for cell in committed.cells for o in cell.get("outputs", [])]
    assert outputs, "the committed notebook carries its outputs"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_executes(source):
    notebook = build_notebooks.executed(source)
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "each notebook shows at least one plot"
