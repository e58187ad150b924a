"""Lab 03's drawn diagram: MLA's data flow for one token and one head — what is cached, where RoPE goes, what is
up-projected, and what weight absorption folds away. Widths are DeepSeek-V3's, read from its config."""

from __future__ import annotations

from matplotlib.patches import FancyBboxPatch

from dslab import plots
from dslab.configs import load

IN, CACHED, WEIGHT, QUERY, OUT, GREY = "#eeeeee", "#c8e6c9", "#fde2c4", "#dbe9f6", "#e8dff5", "#9a9a9a"


def _dashed(ax, x, y, w, h, text, fontsize=7.5):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", facecolor="white",
                                edgecolor=GREY, lw=1.0, ls="--"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, color="#555555")


def mla_dataflow():
    a = load("deepseek-v3-671b")
    c, r, d, v, q = a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim, a.v_head_dim, a.q_lora_rank
    fig, ax = plots.diagram(11.0, 5.6)
    ax.text(0.15, 5.35, "MLA for one token t and one head i (DeepSeek-V3 widths)", fontsize=10, fontweight="bold")

    # --- the key/value side: what is cached
    h = plots.box(ax, 0.15, 3.35, 1.0, 0.6, f"$h_t$\n{a.dim:,}", IN, 8)
    plots.box(ax, 1.55, 3.35, 1.0, 0.6, "wkv_a\n$[W^{DKV}; W^{KR}]$", WEIGHT, 7.5)
    plots.arrow(ax, (h[0] + 0.5, h[1]), (1.55, h[1]))
    plots.box(ax, 2.95, 3.9, 1.2, 0.55, "kv_norm", QUERY, 8)
    plots.box(ax, 2.95, 2.85, 1.2, 0.55, "RoPE at $t$", QUERY, 8)
    plots.arrow(ax, (2.55, 3.75), (2.95, 4.15), f"{c}")
    plots.arrow(ax, (2.55, 3.55), (2.95, 3.1), f"{r}")
    lat = plots.box(ax, 4.55, 3.9, 1.7, 0.55, f"cached: $c^{{KV}}_t$ ({c})", CACHED, 8.5)
    rope = plots.box(ax, 4.55, 2.85, 1.7, 0.55, f"cached: $k^R_t$ ({r})", CACHED, 8.5)
    plots.arrow(ax, (4.15, 4.17), (4.55, 4.17))
    plots.arrow(ax, (4.15, 3.12), (4.55, 3.12))
    ax.text(5.4, 4.6, f"{c + r} numbers per token and layer,\nshared by all {a.n_heads} heads", ha="center",
            fontsize=7.5, color="#2e7d32")

    # --- the query side
    plots.box(ax, 0.15, 1.1, 1.0, 0.6, f"$h_t$\n{a.dim:,}", IN, 8)
    plots.box(ax, 1.55, 1.1, 1.35, 0.6, f"wq_a → q_norm\n→ wq_b ({q})", WEIGHT, 7.5)
    plots.arrow(ax, (1.15, 1.4), (1.55, 1.4))
    qn = plots.box(ax, 3.3, 1.55, 1.25, 0.5, f"$q^C_{{t,i}}$ ({d})", QUERY, 8)
    plots.box(ax, 3.3, 0.6, 1.25, 0.5, f"RoPE at $t$: $q^R_{{t,i}}$ ({r})", QUERY, 7)
    plots.arrow(ax, (2.9, 1.5), (3.3, 1.8))
    plots.arrow(ax, (2.9, 1.3), (3.3, 0.85))

    # --- absorbed attention (the official default)
    plots.box(ax, 5.0, 1.55, 1.45, 0.5, f"$W^{{UK\\top}}_i q^C$ ({c})", WEIGHT, 8)
    plots.arrow(ax, (qn[0] + 0.62, qn[1]), (5.0, qn[1]), "")
    ax.text(5.72, 2.15, "$W^{UK}_i$ folded\ninto the query", ha="center", fontsize=7, color="#b36b00")
    plots.box(ax, 6.95, 1.0, 1.6, 0.8, "scores over cached $j$:\n$q'\\cdot c^{KV}_j + q^R\\cdot k^R_j$\n"
              "scaled (Exercise 3.4), softmax", QUERY, 7)
    plots.arrow(ax, (6.45, 1.8), (6.95, 1.55))
    plots.arrow(ax, (4.55, 0.85), (6.95, 1.2))
    plots.arrow(ax, (lat[0] + 0.85, lat[1] - 0.28), (7.5, 1.8), "", color="#2e7d32")
    plots.arrow(ax, (rope[0] + 0.85, rope[1] - 0.28), (7.2, 1.8), "", color="#2e7d32")
    mix = plots.box(ax, 8.9, 1.0, 1.0, 0.8, f"$\\sum_j p_j\\, c^{{KV}}_j$\n({c})", QUERY, 8)
    plots.arrow(ax, (8.55, 1.4), (8.9, 1.4))
    plots.box(ax, 8.9, 0.05, 1.0, 0.6, f"$W^{{UV}}_i$ → $o_{{t,i}}$ ({v})\n→ wo", WEIGHT, 7)
    plots.arrow(ax, (mix[0], 1.0), (mix[0], 0.65))
    ax.text(10.0, 0.35, "$W^{UV}_i$ applied once,\nafter the mix\n(foldable into wo)", fontsize=7,
            color="#b36b00", va="center")
    ax.text(7.75, 0.3, "absorb: attention runs on\nthe cached latent as it is", ha="center", fontsize=7.5,
            fontweight="bold")

    # --- the expanded alternative
    _dashed(ax, 7.0, 3.15, 3.85, 1.5, "naive / recompute: wkv_b up-projects every cached latent\n"
            f"$k^C_{{j,i}} = W^{{UK}}_i c^{{KV}}_j$ ({d}), $v_{{j,i}} = W^{{UV}}_i c^{{KV}}_j$ ({v}), for all "
            f"{a.n_heads} heads\n\nnaive caches these, plus $k^R$ copied into every head:\n"
            f"{a.n_heads} × ({d} + {r} + {v}) = {a.n_heads * (d + r + v):,} numbers per token and layer;\n"
            "recompute keeps the small cache and redoes them at every step")
    plots.arrow(ax, (6.25, 4.17), (7.0, 4.17), "", color=GREY, ls="--")
    return fig


DIAGRAMS = {"mla_dataflow.png": mla_dataflow}
