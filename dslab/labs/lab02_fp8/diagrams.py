"""Lab 02's picture: DeepSeek-V3's FP8 recipe for one linear layer (V3 §3.3, Fig. 6 and 7): which tensors are FP8,
where their scales live, where promotion to FP32 happens, and what stays in higher precision."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

FP8 = "#f6c8a8"  # FP8 tensors
HIGH = "#dbe9f6"  # BF16 tensors
FP32 = "#d5ecd4"  # FP32 tensors
OP = "#f3e6c8"  # operations


def _box(ax, x, y, w, h, text, color, fontsize=8.0):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", facecolor=color,
                                edgecolor="#3b5b7a", lw=1.0))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)
    return x, y, w, h


def _arrow(ax, start, end, text="", color="#333333", ls="-"):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=color, lw=1.0, ls=ls,
                                                          shrinkA=1, shrinkB=1))
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.05, (start[1] + end[1]) / 2, text, fontsize=6.5, color=color,
                va="center")


def _gemm(ax, x, y, title, out, out_color):
    _box(ax, x, y, 2.5, 0.62, f"{title}\nFP8 × FP8 GEMM", OP, 8)
    _arrow(ax, (x + 1.25, y), (x + 1.25, y - 0.42))
    _box(ax, x + 0.45, y - 0.95, 1.6, 0.5, out, out_color, 7.5)


COLUMNS = {"Fprop": 0.3, "Dgrad": 3.35, "Wgrad": 6.4}  # left edge of each GEMM's column
TITLES = {"Fprop": "forward: y = x Wᵀ", "Dgrad": "input gradient: dx = dy W", "Wgrad": "weight gradient: dW = dyᵀ x"}


def _quantize_arrows(ax, x, right_arrow=True):
    """The arrows of one column: BF16/FP32 inputs down to their FP8 copies, FP8 copies into the GEMM."""
    _arrow(ax, (x + 0.55, 4.85), (x + 0.55, 4.53), "quantize")
    if right_arrow:
        _arrow(ax, (x + 1.95, 4.85), (x + 1.95, 4.53))
    _arrow(ax, (x + 0.55, 3.8), (x + 0.9, 3.45))
    _arrow(ax, (x + 1.95, 3.8), (x + 1.6, 3.45))


def _fprop(ax, x):
    _box(ax, x, 4.85, 1.1, 0.55, "x  (BF16)\n[T, K]", HIGH)
    _box(ax, x + 1.4, 4.85, 1.1, 0.55, "W master\n(FP32) [N, K]", FP32)
    _box(ax, x, 3.8, 1.1, 0.72, "x  E4M3\n1×128 tiles\nscales [T, K/128]", FP8, 7)
    _box(ax, x + 1.4, 3.8, 1.1, 0.72, "W  E4M3\n128×128 blocks\n[N/128, K/128]", FP8, 7)
    _quantize_arrows(ax, x)
    _gemm(ax, x, 2.82, "Fprop", "y  (BF16)", HIGH)


def _dgrad(ax, x):
    _box(ax, x, 4.85, 1.1, 0.55, "dy  (BF16)\n[T, N]", HIGH)
    _box(ax, x, 3.8, 1.1, 0.72, "dy  E4M3\n1×128 tiles\nalong N", FP8, 7)
    _box(ax, x + 1.4, 3.8, 1.1, 0.72, "W  E4M3\nthe same\n128×128 blocks", FP8, 7)
    _quantize_arrows(ax, x, right_arrow=False)  # W's FP8 copy is Fprop's
    _gemm(ax, x, 2.82, "Dgrad", "dx  (BF16)", HIGH)


def _wgrad(ax, x, x_fprop):
    _box(ax, x, 4.85, 1.1, 0.55, "dy  (BF16)", HIGH)
    _box(ax, x + 1.4, 4.85, 1.1, 0.55, "x  E4M3\n(cached)", FP8, 7.5)
    _box(ax, x, 3.8, 1.1, 0.72, "dyᵀ  E4M3\n128×1 tiles\nalong tokens", FP8, 7)
    _box(ax, x + 1.4, 3.8, 1.1, 0.72, "x  E4M3\nre-quantized\n128×1 tiles", FP8, 7)
    _quantize_arrows(ax, x)
    _gemm(ax, x, 2.82, "Wgrad", "dW  (FP32)", FP32)
    ax.plot([x_fprop + 0.2, x_fprop + 0.2, x + 1.75, x + 1.75], [5.4, 5.6, 5.6, 5.52], color="#b5562a", ls="--",
            lw=1.0)
    _arrow(ax, (x + 1.75, 5.53), (x + 1.75, 5.41), color="#b5562a")
    ax.text((x_fprop + x) / 2 + 1.2, 5.64, "x is kept for backward as FP8 (with its scales)", fontsize=7,
            color="#b5562a", ha="center")


def _optimizer(ax, x_wgrad):
    _box(ax, 9.2, 1.75, 1.65, 0.72, "AdamW\nmoments BF16\nmaster W FP32", FP32, 7.5)
    _arrow(ax, (x_wgrad + 2.05, 2.12), (9.2, 2.12))
    _arrow(ax, (10.6, 2.47), (10.6, 4.85))
    ax.text(10.65, 3.7, "next step's W", fontsize=6.5, rotation=90, va="center")
    _box(ax, 9.2, 4.85, 1.65, 0.55, "W master (FP32)", FP32, 7.5)


def _promotion_inset(ax):
    """V3 Fig. 7b: 128-element partial sums on the tensor cores, promoted into an FP32 register with the scales."""
    ax.text(0.3, 1.45, "Inside every GEMM (V3 Fig. 7b): K is cut into chunks of N_C = 128", fontsize=8.5,
            weight="bold")
    for i in range(4):
        xs = 0.3 + i * 1.75
        _box(ax, xs, 0.72, 1.45, 0.5, "tensor cores: 128 products\n~14-bit partial sum", FP8, 6.8)
        _arrow(ax, (xs + 0.72, 0.72), (xs + 0.72, 0.42))
    _box(ax, 0.3, 0.05, 6.7, 0.36, "FP32 register on CUDA cores:  C += partial · scale_x[tile] · scale_W[block]"
         "   (promotion; the scales are applied here)", FP32, 7.5)
    ax.text(7.3, 0.95, "no promotion: one 14-bit sum over all\nof K = 4096 → max error ≈ 2% (§3.3.2)",
            fontsize=7, color="#8a1c1c")


def _high_precision_and_legend(ax):
    _box(ax, 7.3, 0.05, 3.55, 0.62, "kept in BF16 / FP32: embedding, output head,\nMoE router, RMSNorm, "
         "attention core (softmax(qkᵀ)v)", HIGH, 7)
    for label, color, y in (("FP8 (E4M3)", FP8, 3.85), ("BF16", HIGH, 3.55), ("FP32", FP32, 3.25)):
        ax.add_patch(FancyBboxPatch((9.25, y), 0.25, 0.18, boxstyle="square,pad=0", facecolor=color,
                                    edgecolor="#3b5b7a", lw=0.8))
        ax.text(9.6, y + 0.09, label, fontsize=7, va="center")


def fp8_recipe():
    """Fprop, Dgrad and Wgrad of one linear layer with their FP8 operands, scales and outputs; the promotion inside
    every GEMM; the parts of the model that stay in higher precision."""
    fig = Figure(figsize=(11.0, 6.0))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, 11.0), ylim=(0, 6.0))
    ax.axis("off")
    for name, x in COLUMNS.items():
        ax.text(x + 1.25, 5.82, TITLES[name], ha="center", fontsize=9.5, weight="bold")
    _fprop(ax, COLUMNS["Fprop"])
    _dgrad(ax, COLUMNS["Dgrad"])
    _wgrad(ax, COLUMNS["Wgrad"], COLUMNS["Fprop"])
    _optimizer(ax, COLUMNS["Wgrad"])
    _promotion_inset(ax)
    _high_precision_and_legend(ax)
    return fig


DIAGRAMS = {"fp8_recipe.png": fp8_recipe}
