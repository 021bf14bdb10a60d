"""What the benchmarks measure of a compiled executable: its memory, from ``memory_analysis()`` (so it is
known even for what is too large to run), and the median time of repeated runs after a warm-up; and the figure
each benchmark draws of its results."""

import contextlib
import time

import jax
import numpy as np


def memory(compiled) -> dict:
    analysis = compiled.memory_analysis()
    out = {
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
    }
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
    return out


def median_seconds(compiled, args, repeats: int) -> float:
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@contextlib.contextmanager
def figure(path, columns: int, figsize: tuple[float, float], *, dpi: int = 110, **subplots):
    """A row of ``columns`` matplotlib axes, drawn off-screen and saved to ``path`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=figsize, **subplots)
    yield axes
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
