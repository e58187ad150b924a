"""Lab 07's drawn diagrams (``python -m dslab diagrams`` embeds them in solutions/07_systems.ipynb)."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

BLUE, ORANGE, GREEN, GREY = "#dbe9f6", "#fde3c0", "#d9f0d3", "#eeeeee"


def _canvas(width: float, height: float):
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, width), ylim=(0, height))
    ax.axis("off")
    return fig, ax


def _box(ax, x, y, w, h, text, color=BLUE, fontsize=8.5):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.06", facecolor=color,
                                edgecolor="#3b5b7a", lw=1.0))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text="", color="#333333", ls="-", fontsize=7.5, offset=(0.0, 0.06), rad=0.0):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=color, lw=1.1, ls=ls,
                                                          shrinkA=1, shrinkB=1, connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, ha="center",
                va="bottom", fontsize=fontsize, color=color)


def ep_layer() -> Figure:
    """One forward of ExpertParallelMoE on two ranks: local routing, three all-to-alls, local experts, combine."""
    fig, ax = _canvas(9.6, 6.7)
    steps = [("this rank's tokens x  [T_r, d]", GREY),
             ("gate (a copy on every rank): top-k experts and weights", BLUE),
             ("sort (token, expert) pairs by expert = by the rank holding it", BLUE),
             ("all-to-all of the counts [W, E/W]: the split sizes", ORANGE),
             ("all-to-all of the rows (uneven splits): dispatch", ORANGE),
             ("the E/W local experts on the rows that arrived", GREEN),
             ("all-to-all back, splits swapped: combine", ORANGE),
             ("weight by g, add per token; + shared expert (local)", BLUE)]
    xs, w, h, top = (0.3, 5.5), 3.8, 0.52, 5.75
    for r, x in enumerate(xs):
        ax.text(x + w / 2, 6.42, f"rank {r}  (experts {r * 8}–{r * 8 + 7} of 16)", ha="center", fontsize=10,
                weight="bold")
        for i, (text, color) in enumerate(steps):
            y = top - i * 0.72
            _box(ax, x, y, w, h, text, color)
            if i:
                _arrow(ax, (x + w / 2, y + 0.72), (x + w / 2, y + h))
    for i in (3, 4, 6):  # the collectives: both ranks exchange
        y = top - i * 0.72 + h / 2
        _arrow(ax, (xs[0] + w, y + 0.08), (xs[1], y + 0.08), color="#c0392b")
        _arrow(ax, (xs[1], y - 0.08), (xs[0] + w, y - 0.08), color="#c0392b")
    ax.text(4.8, 0.12, "backward: the same all-to-alls with the split sizes swapped, in reverse order",
            ha="center", fontsize=8.5, style="italic")
    return fig


def v3_dispatch() -> Figure:
    """V3's dispatch of one token (§3.2.2): once over InfiniBand per target node, then NVLink inside each node."""
    fig, ax = _canvas(9.6, 4.3)
    nodes, gpus, gw, gh = 3, 4, 0.9, 0.55
    experts = {(0, 2), (1, 1), (1, 3), (2, 1)}  # (node, gpu) holding one of the token's experts
    pos = {}
    for n in range(nodes):
        x0 = 0.3 + n * 3.15
        ax.add_patch(FancyBboxPatch((x0, 0.5), 2.85, 2.9, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor="white", edgecolor="#555555", lw=1.0, ls="--"))
        ax.text(x0 + 1.42, 0.62, f"node {n}", ha="center", fontsize=10, weight="bold")
        for g in range(gpus):
            x, y = x0 + 0.3 + (g % 2) * 1.3, 2.45 - (g // 2) * 1.45
            color = ORANGE if (n, g) == (0, 1) else GREEN if (n, g) in experts else GREY
            label = f"GPU {g}" + ("\ntoken" if (n, g) == (0, 1) else "\nexpert" if (n, g) in experts else "")
            _box(ax, x, y, gw, gh, label, color, fontsize=8)
            pos[(n, g)] = (x + gw / 2, y + gh / 2)
    # IB: once per other node, to the GPU with the same in-node index (1), drawn as arcs above the boxes
    for n in (1, 2):
        a, b = pos[(0, 1)], pos[(n, 1)]
        _arrow(ax, (a[0], a[1] + 0.3), (b[0], b[1] + 0.3), "", color="#c0392b", rad=-0.25)
        ax.text((a[0] + b[0]) / 2, 3.25 + 0.2 * n, "IB (50 GB/s)", ha="center", fontsize=7.5, color="#c0392b")
    # NVLink: inside each node, from where the copy is to each GPU holding an expert
    for (n, g) in sorted(experts):
        if g != 1:
            a, b = pos[(n, 1)], pos[(n, g)]
            _arrow(ax, (a[0], a[1] - 0.3), (b[0], b[1] + 0.3) if b[1] < a[1] else (b[0] - 0.2, b[1] - 0.3),
                   "NVLink", color="#2471a3", offset=(0.25, 0.0))
    ax.text(4.8, 0.15, "one token, 4 experts on 3 nodes: 2 IB copies (not 3), then NVLink inside each node; "
            "node-limited routing caps the IB copies at M", ha="center", fontsize=8.5, style="italic")
    return fig


DIAGRAMS = {"ep_layer.png": ep_layer, "v3_dispatch.png": v3_dispatch}
