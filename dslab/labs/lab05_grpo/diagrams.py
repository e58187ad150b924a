"""Lab 05's drawn diagram: DeepSeek-R1's training pipeline (R1 §2.2–§2.4, §4.1), marking which boxes the lab runs."""

from __future__ import annotations

from dslab import plots

LIVE, SHIPPED, NOT_RUN = "#bfe3c0", "#cfe0f3", "#eeeeee"
EDGE = {LIVE: "#2e7d32", SHIPPED: "#3b5b7a", NOT_RUN: "#9e9e9e"}

# box: (text, status); status says what this lab does with it
STAGES = {
    "base": ("base model\n(V3-Base; here: 0.17M params\npretrained on arithmetic text)", SHIPPED),
    "zero_rl": ("RL: GRPO\naccuracy + format rewards\n(rule-based)", LIVE),
    "zero": ("DeepSeek-R1-Zero", LIVE),
    "cold": ("cold-start SFT\nthousands of readable\nlong CoT examples", LIVE),
    "rl1": ("reasoning RL: GRPO\n+ language-consistency\nreward", SHIPPED),
    "rs": ("rejection sampling\n~600k reasoning + ~200k\nother samples, SFT", SHIPPED),
    "rl2": ("RL for all scenarios\n+ helpfulness and\nharmlessness rewards", NOT_RUN),
    "r1": ("DeepSeek-R1", NOT_RUN),
    "distill": ("distillation: SFT of small\ndense models on R1's\n~800k samples", SHIPPED),
    "small": ("R1-Distill-Qwen/Llama\n(vs RL on the small\nmodel itself)", SHIPPED),
}


def r1_pipeline():
    """Two rows: R1-Zero (base -> RL) and R1 (cold start -> RL -> rejection sampling + SFT -> RL), and distillation."""
    fig, ax = plots.diagram(11.0, 4.6)
    w, h = 1.85, 0.8
    xs = [0.2 + i * 2.15 for i in range(5)]

    def stage(key, x, y, width=w):
        text, color = STAGES[key]
        return plots.box(ax, x, y, width, h, text, color, 7.5, EDGE[color])

    ax.text(0.2, 4.35, "R1-Zero", fontsize=10, fontweight="bold")
    ax.text(0.2, 2.85, "DeepSeek-R1", fontsize=10, fontweight="bold")
    ax.text(0.2, 1.15, "distillation", fontsize=10, fontweight="bold")
    base = stage("base", xs[0], 3.3)
    zero_rl = stage("zero_rl", xs[1], 3.3)
    zero = stage("zero", xs[2], 3.3)
    plots.arrow(ax, (xs[0] + w, base[1]), (xs[1], zero_rl[1]))
    plots.arrow(ax, (xs[1] + w, zero_rl[1]), (xs[2], zero[1]))
    row = [stage(k, x, 1.8) for k, x in zip(("cold", "rl1", "rs", "rl2", "r1"), xs)]
    plots.arrow(ax, (base[0], 3.3), (row[0][0], 1.8 + h))
    for a, b, x in zip(row, row[1:], xs):
        plots.arrow(ax, (x + w, a[1]), (x + 2.15, b[1]))
    distill = stage("distill", xs[2], 0.1)
    small = stage("small", xs[3], 0.1)
    plots.arrow(ax, (row[2][0], 1.8), (distill[0], 0.1 + h), text="correct samples", fontsize=7)
    plots.arrow(ax, (xs[2] + w, distill[1]), (xs[3], small[1]))
    plots.arrow(ax, (xs[2] + 0.3, 3.3), (xs[0] + w - 0.1, 1.8 + h), ls=":", color="#777777")
    ax.text(xs[1] + 0.75, 2.78, "some R1-Zero outputs, made readable, join the cold-start data", fontsize=6.5,
            color="#555555")
    for i, (color, label) in enumerate(((LIVE, "runs live in this lab"),
                                        (SHIPPED, "from the lab's shipped checkpoint or curves"),
                                        (NOT_RUN, "not in this lab"))):
        plots.box(ax, 7.1, 3.95 - i * 0.32, 0.35, 0.22, "", color, 7, EDGE[color])
        ax.text(7.55, 4.06 - i * 0.32, label, fontsize=7.5, va="center")
    return fig


DIAGRAMS = {"r1_pipeline.png": r1_pipeline}
