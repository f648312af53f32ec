"""Figures without a display: matplotlib's Agg backend, and PNGs written atomically."""

from __future__ import annotations

import os
from typing import Any

from tangshi.atomic import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: it costs a second at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path`` (all or nothing) and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)
