"""Lab 04's drawn diagrams: the shift bookkeeping of MTP (which position embeds and predicts which token at each
depth, and the causal chain from depth to depth: V3's Figure 3 redrawn), and one step of speculative decoding."""

from __future__ import annotations

from dslab import plots

TOKEN, MAIN, MODULE, MISSING, HEAD, DRAFT, OK, NO = ("#eeeeee", "#dbe9f6", "#fde2c4", "#ffffff", "#e8dff5",
                                                     "#fff3b0", "#c8e6c9", "#f8c9c4")
GREY = "#9a9a9a"


def mtp_shift(T: int = 6, depth: int = 2):
    """Positions 0..T-1 of a window t_0..t_T; row k = depth k (0: the main model)."""
    fig, ax = plots.diagram(12.5, 5.6)
    x0, dx, w, h = 1.75, 1.12, 0.98, 0.62
    ys = {"tokens": 0.35, 0: 1.35, 1: 2.65, 2: 3.95}
    ax.text(0.1, 5.3, f"Multi-Token Prediction with D = {depth}: one training window $t_0..t_{T}$ (T = {T})",
            fontsize=10, fontweight="bold")
    labels = {"tokens": "input tokens", 0: "main model\n(depth 0)", 1: "MTP module 1", 2: "MTP module 2"}
    for key, y in ys.items():
        ax.text(0.1, y + h / 2, labels[key], va="center", fontsize=8.5, fontweight="bold")
    for i in range(T):
        x = x0 + i * dx
        plots.box(ax, x, ys["tokens"], w, h * 0.8, f"$t_{i}$", TOKEN, 9)
        if i == T - 1:
            plots.box(ax, x + dx, ys["tokens"], w, h * 0.8, f"$t_{T}$\n(target only)", MISSING, 7.5, edge=GREY)
        ax.text(x + w / 2, ys["tokens"] - 0.18, f"i = {i}", ha="center", fontsize=7, color="#555555")
        plots.box(ax, x, ys[0], w, h, f"$h^0_{i}$ → $t_{{{i + 1}}}$", MAIN, 8.5)
        plots.arrow(ax, (x + w / 2, ys["tokens"] + h * 0.8), (x + w / 2, ys[0]), color=GREY)
        for k in range(1, depth + 1):
            y = ys[k]
            if i < T - k:
                plots.box(ax, x, y, w, h, f"Emb($t_{{{i + k}}}$)\n→ $t_{{{i + k + 1}}}$", MODULE, 8)
                plots.arrow(ax, (x + w / 2, ys[k - 1] + h), (x + w / 2, y), color="#3b5b7a")
            else:
                plots.box(ax, x, y, w, h, f"no $t_{{{i + k + 1}}}$\nin the window", MISSING, 7,
                          edge=GREY)
    ax.text(x0 + T * dx + 0.1, ys[1] + h / 2, "depth k runs on\nT - k positions",
            ha="left", va="center", fontsize=7.5, color="#b36b00")
    ax.text(x0 + 0.1, ys[2] + h + 0.2, "arrows up: the same position i carries $h^{k-1}_i$ into depth k "
            "(the causal chain)", fontsize=7.5, color="#3b5b7a")

    # --- one module, right side
    mx, mw = 9.6, 2.7
    ax.text(mx + mw / 2, 5.05, "MTP module k at position i", ha="center", fontsize=9, fontweight="bold")
    plots.box(ax, mx, 4.2, 1.25, 0.5, "$h^{k-1}_i$\n→ hnorm", MAIN, 7.5)
    plots.box(ax, mx + 1.45, 4.2, 1.25, 0.5, "Emb($t_{i+k}$)\n→ enorm", TOKEN, 7.5)
    plots.box(ax, mx, 3.35, mw, 0.5, "concat [emb; h]  →  eh_proj $M_k$ (2d → d)   (21)", MODULE, 7.5)
    plots.arrow(ax, (mx + 0.62, 4.2), (mx + 0.62, 3.85))
    plots.arrow(ax, (mx + 2.07, 4.2), (mx + 2.07, 3.85))
    plots.box(ax, mx, 2.5, mw, 0.5, "TRM_k: one Block (MLA + MoE)   (22)", MODULE, 7.5)
    plots.arrow(ax, (mx + mw / 2, 3.35), (mx + mw / 2, 3.0))
    plots.box(ax, mx, 1.65, mw, 0.5, "norm → shared head → $P^k_{i+k+1}$   (23)", HEAD, 7.5)
    plots.arrow(ax, (mx + mw / 2, 2.5), (mx + mw / 2, 2.15))
    ax.text(mx + mw / 2 + 0.1, 2.3, "$h^k_i$ (into depth k + 1)", va="center", fontsize=7, color="#3b5b7a")
    ax.text(mx + mw / 2, 1.05, "embedding and head: the main model's\nown parameters (one copy, two losses)",
            ha="center", fontsize=7.5, color="#6a3d9a")
    ax.text(mx + mw / 2, 0.35, "$L_{MTP} = \\frac{\\lambda}{D}\\sum_k L^k$   (25)", ha="center", fontsize=9)
    return fig


def speculative_step():
    """One greedy step with D = 1: draft, verify in one 2-token forward, keep or correct."""
    fig, ax = plots.diagram(11.0, 3.3)
    ax.text(0.1, 3.05, "One speculative step (D = 1): the MTP module drafts, one main-model forward verifies",
            fontsize=10, fontweight="bold")
    known = ["T", "h", "e", " "]
    for j, ch in enumerate(known):
        plots.box(ax, 0.2 + j * 0.62, 1.9, 0.55, 0.5, f"'{ch}'", TOKEN, 9)
    ax.text(0.2, 2.55, "accepted so far (last token from the main model)", fontsize=7.5)
    plots.box(ax, 2.85, 1.9, 1.45, 0.5, "MTP module:\n$h^0$ of 'e' + Emb(' ')", MODULE, 7)
    plots.arrow(ax, (2.6, 2.15), (2.85, 2.15))
    plots.box(ax, 4.55, 1.9, 0.75, 0.5, "draft\n'c'", DRAFT, 8)
    plots.arrow(ax, (4.3, 2.15), (4.55, 2.15))
    plots.box(ax, 5.6, 1.75, 1.9, 0.8, "main model, one forward\nover [' ', 'c'] (KV cache)\n→ 2 rows of logits",
              MAIN, 7.5)
    plots.arrow(ax, (5.3, 2.15), (5.6, 2.15))
    plots.box(ax, 7.9, 2.35, 2.95, 0.55, "argmax after ' ' = 'c': keep 'c',\nand add the argmax after 'c' (bonus)",
              OK, 7.5)
    plots.box(ax, 7.9, 1.45, 2.95, 0.55, "argmax after ' ' = 'd' ≠ 'c': drop 'c',\nadd 'd' (the main model's own)",
              NO, 7.5)
    plots.arrow(ax, (7.5, 2.25), (7.9, 2.6))
    plots.arrow(ax, (7.5, 2.05), (7.9, 1.75))
    ax.text(0.2, 0.95, "Either way the step appends what plain greedy decoding would: 2 tokens for one forward when "
            "the draft is right, 1 when it is wrong.", fontsize=8)
    ax.text(0.2, 0.55, "Sampling: keep the draft x ~ q with probability min(1, p(x)/q(x)); otherwise sample from "
            "norm(max(0, p − q)). The output is distributed as plain sampling.", fontsize=8)
    ax.text(0.2, 0.15, "Then the MTP module reads the 1 or 2 new positions (its own KV cache) and drafts again.",
            fontsize=8)
    return fig


DIAGRAMS = {"mtp_shift.png": mtp_shift, "speculative_step.png": speculative_step}
