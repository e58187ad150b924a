"""Lab 06's picture: the assembled model of the cpu preset, drawn from its config (``capstone-cpu``) and lab 00's
accounting, so every number in it is what the code builds: the main model's layers (MLA everywhere, the first layer
dense, the others DeepSeekMoE) and the MTP module beside it, sharing the embedding and the output head."""

from __future__ import annotations

from dslab import accounting as acc
from dslab import plots
from dslab.configs import load

EMB, ATTN, DENSE, MOE, MTP, HEAD, NORM = ("#eeeeee", "#dbe9f6", "#d8ecd0", "#fde2c4", "#e8dff5", "#f3e6c8",
                                          "#f7f7f7")


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def capstone_architecture(name: str = "capstone-cpu"):
    """tokens -> embedding -> n_layers blocks -> norm -> head, and the MTP module fed by the last hidden state."""
    a = load(name)
    fig, ax = plots.diagram(12.0, 7.4)
    ax.text(0.1, 7.1, f"{name}: {_m(acc.total_params(a))} parameters, {_m(acc.activated_params(a))} activated per "
            f"token (lab 00's accounting), + {_m(acc.mtp_params(a))} in the MTP module", fontsize=10,
            fontweight="bold")
    x, w = 0.4, 4.6
    plots.box(ax, x, 0.25, w, 0.5, f"input tokens t_0..t_T  →  embedding [{a.vocab_size} × {a.dim}]", EMB, 8.5)
    y, h = 1.0, 0.62
    mla = (f"MLA: {a.n_heads} heads, q: {a.dim}→{a.q_lora_rank}→{a.n_heads}×"
           f"{a.qk_nope_head_dim + a.qk_rope_head_dim}, kv latent {a.kv_lora_rank} + RoPE key {a.qk_rope_head_dim}")
    moe = (f"DeepSeekMoE: {a.n_shared_experts} shared + top-{a.n_activated_experts} of {a.n_routed_experts} routed "
           f"experts (width {a.moe_inter_dim}), {a.n_expert_groups} groups, {a.n_limited_groups} kept, gate bias b_i")
    for layer in range(a.n_layers):
        dense = layer < a.n_dense_layers
        plots.box(ax, x, y, w, h * 0.42, f"layer {layer}:  RMSNorm → {mla.split(':')[0]}  (+ residual)", ATTN, 7.5)
        ffn = f"RMSNorm → dense SwiGLU, width {a.inter_dim}" if dense else \
            f"RMSNorm → DeepSeekMoE, {a.n_shared_experts} + {a.n_activated_experts} of {a.n_routed_experts}"
        plots.box(ax, x, y + h * 0.46, w, h * 0.42, ffn + "  (+ residual)", DENSE if dense else MOE, 7.5)
        plots.arrow(ax, (x + w / 2, y - 0.22), (x + w / 2, y), color="#777777")
        y += h + 0.25
    plots.box(ax, x, y, w, 0.45, "final RMSNorm  →  output head [dim → vocab]: predicts t_{i+1}", HEAD, 8.5)
    plots.arrow(ax, (x + w / 2, y - 0.22), (x + w / 2, y), color="#777777")
    # the MTP module
    mx, mw = 6.6, 4.9
    hy = y - 0.6
    plots.box(ax, mx, 1.0, mw, 0.55, "Emb(t_{i+1}): the shared embedding, one token ahead", EMB, 8)
    plots.box(ax, mx, 1.85, mw, 0.75, "[RMSNorm(Emb(t_{i+1})) ; RMSNorm(h^0_i)]\n→ eh_proj M_1 "
              f"[{2 * a.dim} → {a.dim}]   (V3 eq. 21)", MTP, 8)
    plots.box(ax, mx, 2.9, mw, 0.95, f"one more block (layer id {a.n_layers}):\nMLA + DeepSeekMoE, its own "
              "weights and gate bias   (eq. 22)", MOE, 8)
    plots.box(ax, mx, 4.15, mw, 0.55, "RMSNorm → the shared output head: predicts t_{i+2}  (eq. 23)", HEAD, 8)
    plots.arrow(ax, (mx + mw / 2, 1.55), (mx + mw / 2, 1.85))
    plots.arrow(ax, (mx + mw / 2, 2.6), (mx + mw / 2, 2.9))
    plots.arrow(ax, (mx + mw / 2, 3.85), (mx + mw / 2, 4.15))
    plots.arrow(ax, (x + w, hy), (mx, 2.25), color="#6a4c93")
    ax.text(x + w + 0.55, hy - 0.35, "h^0_i, the last\nlayer's output", fontsize=7.5, color="#6a4c93")
    plots.arrow(ax, (x + w, 0.5), (mx, 1.27), color="#777777", ls="--")
    ax.text(x + w + 0.25, 0.62, "shared embedding", fontsize=7.5, color="#777777", rotation=8)
    plots.arrow(ax, (x + w, y + 0.3), (mx, 4.55), color="#777777", ls="--")
    ax.text(x + w + 0.25, y + 0.05, "shared head", fontsize=7.5, color="#777777", rotation=-12)
    ax.text(mx, 4.95, "MTP module (V3 §2.2), trained with L_main + (λ/D) Σ L^k  (eq. 25);\nat inference it drafts "
            "the second token for speculative decoding", fontsize=8, color="#6a4c93")
    ax.text(0.4, 6.55, mla, fontsize=8, color="#1f4e79")
    ax.text(0.4, 6.25, moe, fontsize=8, color="#8a5a00")
    return fig


DIAGRAMS = {"capstone_architecture.png": capstone_architecture}
