"""One matplotlib figure written to a PNG: the headless backend, layout, save and close in one place."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def figure(path: str, figsize: tuple[float, float], dpi: int = 100) -> Iterator[tuple]:
    """`with figure(path, (7, 4)) as (fig, ax): ax.plot(...)` saves `path` when the block ends without error."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield fig, ax
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
