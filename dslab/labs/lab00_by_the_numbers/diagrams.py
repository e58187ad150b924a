"""Lab 00's drawn diagram: where DeepSeek-V3's parameters sit, and what one token runs through.

Every number on the picture is computed from the config by ``dslab.accounting`` when it is drawn
(``python -m dslab diagrams``), so the picture cannot drift from the counts the notebook prints.
"""

from __future__ import annotations

from matplotlib.patches import FancyBboxPatch, Rectangle

from dslab import accounting as acc
from dslab import plots
from dslab.configs import load

STORED, ROUTED, MTP = "#dbe9f6", "#eef3f8", "#f2f2f2"
PICKED, SKIPPED = "#f39c4a", "#c9d6e3"


def _b(n: int) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M"


def v3_parameters():
    """The V3 stack on the left, one MoE layer taken apart on the right, the MTP module apart."""
    v3 = load("deepseek-v3-671b")
    n_moe = v3.n_layers - v3.n_dense_layers
    attn, expert, gate = acc.attention_params(v3), acc.expert_params(v3), acc.gate_params(v3)
    dense_layer, moe_layer = acc.layer_params(v3, 0), acc.layer_params(v3, v3.n_dense_layers)
    moe_active = acc.layer_params(v3, v3.n_dense_layers, activated=True)
    emb, head = acc.embedding_params(v3), acc.head_params(v3)

    fig, ax = plots.diagram(10.0, 5.0)
    ax.text(1.7, 4.78, f"DeepSeek-V3: {_b(acc.total_params(v3))} stored,\n{_b(acc.activated_params(v3))} "
            "run per token", ha="center", va="center", fontsize=9.5, fontweight="bold")
    plots.box(ax, 0.3, 0.2, 2.8, 0.55, f"input embedding {v3.vocab_size:,} × {v3.dim:,}\n{_b(emb)}", STORED, 8)
    plots.box(ax, 0.3, 0.95, 2.8, 0.7, f"{v3.n_dense_layers} dense layers, {_b(dense_layer)} each\n"
              f"MLA + SwiGLU FFN of width {v3.inter_dim:,}", STORED, 8)
    plots.box(ax, 0.3, 1.85, 2.8, 1.55, f"{n_moe} MoE layers\n{_b(moe_layer)} stored each\n{_b(moe_active)} run "
              f"per token\n= {_b(n_moe * moe_layer)} in all", ROUTED, 8.5)
    plots.box(ax, 0.3, 3.6, 2.8, 0.55, f"final RMSNorm + output head {v3.dim:,} × {v3.vocab_size:,}\n{_b(head)}",
              STORED, 8)
    for y in (0.75, 1.65, 3.4):
        plots.arrow(ax, (1.7, y), (1.7, y + 0.2))
    ax.plot([3.1, 3.6], [3.4, 4.45], color="#7a8a9a", lw=0.8, ls=":")
    ax.plot([3.1, 3.6], [1.85, 0.15], color="#7a8a9a", lw=0.8, ls=":")

    ax.add_patch(Rectangle((3.6, 0.15), 4.0, 4.3, facecolor="white", edgecolor="#7a8a9a", lw=0.8))
    ax.text(5.6, 4.28, "one MoE layer", ha="center", fontsize=9, fontweight="bold")
    plots.box(ax, 3.8, 3.5, 3.6, 0.55, f"MLA attention: {_b(attn)}\n(wq_a, q_norm, wq_b, wkv_a, kv_norm, wkv_b, wo)",
              STORED, 8)
    plots.box(ax, 3.8, 2.85, 1.7, 0.5, f"gate {_b(gate)}\n{v3.n_routed_experts} centroids + bias", STORED, 7.5)
    plots.box(ax, 5.7, 2.85, 1.7, 0.5, f"{v3.n_shared_experts} shared expert\n{_b(expert)}, always runs", STORED,
              7.5)
    side = 16  # 256 routed experts as a 16 x 16 grid; the gate picks 8 for this token
    picked = {5, 38, 71, 120, 143, 190, 215, 250}
    cell = 0.13
    for i in range(v3.n_routed_experts):
        r, c = divmod(i, side)
        ax.add_patch(Rectangle((4.32 + c * (cell + 0.03), 0.45 + (side - 1 - r) * (cell + 0.01) * 0.9), cell,
                               cell * 0.85, facecolor=PICKED if i in picked else SKIPPED, edgecolor="none"))
    ax.text(5.6, 0.27, f"{v3.n_routed_experts} routed experts × {_b(expert)} = {_b(v3.n_routed_experts * expert)}; "
            f"the gate picks {v3.n_activated_experts} (orange)", ha="center", fontsize=7.5)

    ax.add_patch(FancyBboxPatch((7.85, 2.2), 2.0, 2.2, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=MTP, edgecolor="#888888", lw=1.0, ls="--"))
    mtp = acc.mtp_params(v3)
    ax.text(8.85, 3.3, f"MTP module\n(layer {v3.n_layers},\nnot in the {_b(acc.total_params(v3))})\n\n"
            f"{_b(mtp)} unique\n+ its own copies of\nembedding and head\n→ the 685B checkpoint",
            ha="center", va="center", fontsize=7.5)
    ax.text(8.85, 1.35, f"Every block runs for\nevery token, except the\nrouted experts the gate\nskips: "
            f"{v3.n_routed_experts - v3.n_activated_experts} of "
            f"{v3.n_routed_experts}\nin each MoE layer.", ha="center", va="center", fontsize=7.5, color="#555555")
    return fig


DIAGRAMS = {"v3_parameters.png": v3_parameters}
