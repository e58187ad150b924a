"""Lab 01's picture: one token through a DeepSeekMoE layer, drawn from a real routing decision of ``dslab.moe.route``
(16 experts in 4 groups, 2 groups kept, top-4, with a bias), so every number in the picture is what the code does."""

from __future__ import annotations

import torch

from dslab import moe, plots

N_EXPERTS, N_GROUPS, KEPT, TOP_K = 16, 4, 2, 4


def _example() -> dict:
    """A token's affinities, a bias, and the routing the official semantics give them."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, N_EXPERTS, generator=gen) * 1.4
    bias = 0.25 * torch.randn(N_EXPERTS, generator=gen)
    s = moe.affinities(logits, "sigmoid")[0]
    weights, idx = moe.route(logits, bias, TOP_K, N_GROUPS, KEPT, "sigmoid", 1.0)
    biased = (s + bias).view(N_GROUPS, -1)
    group_score = biased.topk(2, -1).values.sum(-1)
    kept = set(group_score.topk(KEPT).indices.tolist())
    return {"s": s, "bias": bias, "kept": kept, "group_score": group_score, "chosen": idx[0].tolist(),
            "weights": dict(zip(idx[0].tolist(), weights[0].tolist()))}


def moe_routing():
    """token -> affinities -> groups -> top-k -> experts -> weighted sum, with the shared expert beside."""
    ex = _example()
    fig, ax = plots.diagram(11.0, 5.2)
    tok = plots.box(ax, 0.15, 2.35, 0.9, 0.6, "token\n$u_t$", "#f3e6c8")
    ax.text(1.4, 4.85, "1  affinities  $s_{i,t}=\\sigma(u_t^\\top e_i)$  (+ bias $b_i$ for selection only)",
            fontsize=9)
    ax.text(1.4, 3.35, "2  group score = sum of its top-2 $s+b$;  keep 2 of 4 groups, mask the rest with $-\\infty$",
            fontsize=9)
    ax.text(1.4, 1.85, "3  top-4 of $s+b$ in the kept groups;  weights $g$ = their $s$ renormalised (× route_scale)",
            fontsize=9)
    x0, cell = 1.45, 0.34
    for i in range(N_EXPERTS):
        group = i // (N_EXPERTS // N_GROUPS)
        x = x0 + i * cell + group * 0.22
        s = float(ex["s"][i])
        plots.box(ax, x, 4.05, cell - 0.04, 0.6, f"{s:.2f}", plt_color(s), fontsize=6.5, style="square,pad=0")
        kept = group in ex["kept"]
        color = "#dbe9f6" if kept else "#e6e6e6"
        label = f"{float(ex['s'][i] + ex['bias'][i]):+.2f}" if kept else "−∞"
        plots.box(ax, x, 2.55, cell - 0.04, 0.6, label, color, fontsize=6.5, style="square,pad=0")
        chosen = i in ex["chosen"]
        plots.box(ax, x, 1.05, cell - 0.04, 0.6, f"{ex['weights'][i]:.2f}" if chosen else "", "#f6c8a8" if chosen
                  else "#f4f4f4", fontsize=6.5, style="square,pad=0", edge="#b5562a" if chosen else "#aaaaaa")
        ax.text(x + (cell - 0.04) / 2, 0.9, str(i), ha="center", va="top", fontsize=6, color="0.35")
    for g in range(N_GROUPS):
        xg = x0 + g * (N_EXPERTS // N_GROUPS) * cell + g * 0.22
        status = "kept" if g in ex["kept"] else "dropped"
        ax.text(xg + 2 * cell, 3.22, f"group {g}: {float(ex['group_score'][g]):.2f} ({status})", ha="center",
                fontsize=7, color="#1f4e79" if g in ex["kept"] else "0.45")
    plots.arrow(ax, (tok[0] + 0.45, tok[1] + 0.2), (x0 - 0.05, 4.35))
    ax.text(x0 + N_EXPERTS * cell / 2 + 0.3, 0.62, "expert index", ha="center", fontsize=7, color="0.35")
    right = x0 + N_EXPERTS * cell + 3 * 0.22 + 0.25
    ffn = plots.box(ax, right, 1.0, 1.6, 0.7, "4 routed experts\n$g_{i,t}\\,$FFN$_i(u_t)$", "#f6c8a8", fontsize=8)
    shared = plots.box(ax, right, 0.0, 1.6, 0.6, "shared expert\nFFN$^{(s)}(u_t)$", "#d5ecd4", fontsize=8)
    plots.arrow(ax, (right - 0.25, 1.35), (right, 1.35))
    ax.plot([tok[0], tok[0], right - 0.3], [tok[1] - 0.32, 0.3, 0.3], ls="--", color="#3a7d3a", lw=1.1)
    plots.arrow(ax, (right - 0.3, 0.3), (right, 0.3), ls="--", color="#3a7d3a")
    ax.text(tok[0] + 0.1, 0.38, "every token runs the shared expert", fontsize=7, color="#3a7d3a")
    out = plots.box(ax, right + 2.0, 0.75, 1.05, 0.75, "$h'_t = u_t$\n+ shared\n+ Σ routed", "#f3e6c8", fontsize=7.5)
    plots.arrow(ax, (ffn[0] + 0.8, ffn[1]), (out[0] - 0.52, out[1] + 0.15))
    plots.arrow(ax, (shared[0] + 0.8, shared[1]), (out[0] - 0.52, out[1] - 0.15))
    ax.text(out[0], 0.45, "eq. 12", ha="center", fontsize=7, color="0.35")
    top = int(ex["s"].argmax())
    if top not in ex["chosen"]:
        xt = x0 + top * cell + (top // (N_EXPERTS // N_GROUPS)) * 0.22 + cell / 2
        ax.annotate(f"expert {top} has the highest affinity,\nbut its group is dropped", xy=(xt, 4.05),
                    xytext=(right, 3.9), fontsize=7.5, color="#8a1c1c",
                    arrowprops=dict(arrowstyle="-|>", color="#8a1c1c", lw=0.9))
    return fig


def plt_color(value: float) -> str:
    """A blue whose depth follows an affinity in [0, 1]."""
    from matplotlib import colormaps

    r, g, b, _ = colormaps["Blues"](0.15 + 0.7 * value)
    return f"#{int(255 * r):02x}{int(255 * g):02x}{int(255 * b):02x}"


DIAGRAMS = {"moe_routing.png": moe_routing}
