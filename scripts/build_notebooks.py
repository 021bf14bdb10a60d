"""Execute the notebook sources in notebooks/ (jupytext percent scripts, ``NN_name.py``, linted with the rest of
the code) and write each, with its outputs, as ``NN_name.ipynb`` beside it. tests/test_notebooks.py executes the
sources again and checks that the committed notebooks carry exactly their cells.

    python scripts/build_notebooks.py [NAME ...]
"""

import pathlib
import sys

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9]*.py"))


def executed(source: pathlib.Path) -> nbformat.NotebookNode:
    """The notebook of a percent script, executed from the project root (where ``examples/`` is)."""
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return notebook


def main(names: list[str]) -> None:
    for source in SOURCES:
        if names and source.stem not in names:
            continue
        path = source.with_suffix(".ipynb")
        nbformat.write(executed(source), path)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
