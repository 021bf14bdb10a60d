"""The python blocks of README.md and docs/*.md, run as a user pastes them: in order, in one namespace per page
or section, so that a fragment's setup is a visible block before it (in the README, a collapsed "What the block
below assumes" block).

``RUNS`` says which test runs each page's blocks; tests/test_docs.py checks that together they run every block."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"```python\n(.*?)\n```", flags=re.DOTALL)


def text(page: str, start: str | None = None, end: str | None = None) -> str:
    """The page from the line that begins with ``start`` (a heading) to the line that begins with ``end``, or to
    the next heading of ``start``'s level."""
    whole = (ROOT / page).read_text()
    begin = 0 if start is None else whole.index(f"\n{start}") + 1
    if end is None and start is not None:
        end = start.split(" ")[0] + " "
    stop = -1 if end is None else whole.find(f"\n{end}", begin + 1)
    return whole[begin : None if stop < 0 else stop]


def blocks(page: str, start: str | None = None, end: str | None = None) -> list[str]:
    return _BLOCK.findall(text(page, start, end))


def run(page: str, start: str | None = None, end: str | None = None) -> dict:
    """Executes the blocks of ``page`` between ``start`` and ``end`` in order, in one namespace, and returns it."""
    namespace: dict = {}
    found = blocks(page, start, end)
    assert found, (page, start)
    for block in found:
        exec(compile(block, f"{page} ({start or 'top'})", "exec"), namespace)
    return namespace


# page -> [(start, end, the test that runs those blocks)]: together, every python block of the page.
RUNS = {
    "README.md": [(None, None, "tests/test_docs.py::test_the_readme_blocks_run_as_pasted_and_compute_what_they_say")],
    "docs/api.md": [(None, None, "tests/test_docs.py::test_the_api_page_blocks_run_as_pasted")],
    "docs/errors.md": [(None, None, "tests/test_docs.py::test_the_errors_page_block_runs_as_pasted")],
    "docs/scaling.md": [
        (None, "## SigLIP across devices", "tests/test_sharding.py::test_every_example_in_the_scaling_docs_runs"),
        ("## SigLIP across devices", None, "tests/test_contrastive.py::test_the_train_step_in_the_scaling_docs_runs"),
    ],
    "docs/migration.md": [
        (f"## {title}", None, "tests/test_frameworks.py")
        for title in (
            "Keras 3",
            "Flax NNX: value checks",
            "Equinox",
            "Flax NNX: the fused classifier update",
            "Equinox: the fused classifier update",
        )
    ],
}
