"""The discovery curve: how many objects labelled interesting among the first N viewed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def draw_discovery(figure, curves: dict[str, Sequence[float]], threshold: int) -> None:
    """Objects labelled >= `threshold` among the first N of each ordering, one step line each."""
    axis = figure.add_subplot()
    for name, curve in curves.items():
        axis.step(np.arange(1, len(curve) + 1), curve, where="post", label=name)
    axis.set_xlabel("objects viewed (N)")
    axis.set_ylabel(f"labelled interest >= {threshold}")
    axis.legend(loc="upper left")
