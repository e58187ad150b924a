"""Pure figure helpers shared by the labs.

Figures are built with ``matplotlib.figure.Figure`` directly, not through pyplot: nothing is drawn as a side effect
and nothing leaks, so a notebook shows a figure exactly once, when it displays the returned object.
"""

from __future__ import annotations

import sys

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _inline_png() -> None:
    """In a Jupyter kernel, display Figure objects as PNG although they never pass through pyplot."""
    if "ipykernel" not in sys.modules:
        return
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except Exception:  # noqa: BLE001 - no inline backend: figures still show as text
        pass


_inline_png()


def smooth(values, window: int = 20) -> np.ndarray:
    """Trailing mean of ``values`` over ``window`` points (fewer at the start), for noisy training curves."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def figure(ncols: int = 1, width: float = 5.0, height: float = 3.4, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure with ``ncols`` side-by-side axes, each ``width`` x ``height`` inches; ``sharey`` puts every panel on
    one y scale (for panels a reader compares)."""
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, ncols, sharey=sharey)))


def grouped_bars(ax: Axes, labels: list[str], series: dict[str, list[float]], ylabel: str = "",
                 log: bool = False, fmt: str = "{:.3g}") -> Axes:
    """Bars for each label, one colour per series; with a single series the values are written on top."""
    if any(len(v) != len(labels) for v in series.values()):
        raise ValueError("every series must have one value per label")
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        if len(series) == 1:
            ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=8, padding=1)
            ax.margins(y=0.12)  # headroom, so the tallest bar's label clears the frame
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    return ax


# ------------------------------------------------------------------------------------------------- diagrams
def diagram(width: float = 9.0, height: float = 4.0) -> tuple[Figure, Axes]:
    """An empty canvas for a block diagram, in data units of 1 per inch (x to ``width``, y to ``height``)."""
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, width), ylim=(0, height))
    ax.axis("off")
    return fig, ax


def box(ax: Axes, x: float, y: float, w: float, h: float, text: str, color: str = "#dbe9f6",
        fontsize: float = 9, edge: str = "#3b5b7a", style: str = "round,pad=0.02,rounding_size=0.08") -> tuple:
    """A labelled rounded box with its lower-left corner at (x, y); returns its centre."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, facecolor=color, edgecolor=edge, lw=1.1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, wrap=True)
    return x + w / 2, y + h / 2


def arrow(ax: Axes, start: tuple, end: tuple, text: str = "", color: str = "#333333", fontsize: float = 8,
          style: str = "-|>", ls: str = "-") -> None:
    """An arrow from ``start`` to ``end`` with an optional label at its middle."""
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle=style, color=color, lw=1.1, ls=ls,
                                                          shrinkA=2, shrinkB=2))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.08, text, ha="center", va="bottom",
                fontsize=fontsize, color=color)

