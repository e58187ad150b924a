"""Lab 00's harnesses: FLOPs measured on real modules with a FLOP counter, and the notebook's figures."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dslab import plots
from dslab.configs import ModelArgs

# Human names for the keys of ``dslab.accounting.param_breakdown``.
LABELS = {"embedding": "input embedding", "attention": "attention (MLA)", "dense_ffn": "dense FFNs",
          "shared_experts": "shared experts", "routed_experts": "routed experts", "gate": "gates (routers)",
          "norms": "RMSNorms", "head": "output head", "mtp": "MTP module"}


@torch.no_grad()
def decode_flops(args: ModelArgs, contexts: Iterable[int], seed: int = 0) -> dict[int, int]:
    """Matmul FLOPs that ``torch.utils.flop_counter`` counts for one decode step of a ``dslab.model.Transformer``
    built from ``args``, with the new token at position ctx - 1 (it attends to ctx keys) -> {ctx: FLOPs}.

    The count does not depend on what the cache holds, so no prefill is run. Elementwise work (RMSNorm weights,
    RoPE, softmax) is not a matmul and is not counted. MLA models decode with absorption (``dslab.mla.MLA``'s
    default).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from dslab.model import Transformer

    contexts = sorted(set(contexts))
    torch.manual_seed(seed)
    model = Transformer(args.replace(max_seq_len=max(contexts)), max_batch_size=1).eval()
    token = torch.zeros(1, 1, dtype=torch.long)
    found = {}
    for ctx in contexts:
        with FlopCounterMode(display=False) as counter:
            model(token, start_pos=ctx - 1)
        found[ctx] = int(counter.get_total_flops())
    return found


def measured_crossover(points: dict[int, int]) -> float:
    """The context at which the attention part of measured FLOPs {ctx: FLOPs} equals the rest: the straight line
    through the first and last points, a + b·ctx, crosses 2a at ctx = a / b."""
    (x0, y0), (x1, y1) = min(points.items()), max(points.items())
    slope = (y1 - y0) / (x1 - x0)
    return (y0 - slope * x0) / slope


def flops_figure(measured: dict, predicted: dict, marks: dict[str, float], curves: dict):
    """Left: measured FLOPs per decoded token (points) and predicted ones (lines) of tiny models, {name: {ctx: FLOPs}},
    with vertical lines at ``marks`` {label: ctx}. Right: FLOPs per token against the context for large models,
    ``curves`` {label: {ctx: FLOPs}}, each marked where its attention part equals its weight part."""
    fig, (ax1, ax2) = plots.figure(2, width=5.2, height=3.6)
    for i, (name, points) in enumerate(measured.items()):
        ctx = sorted(points)
        ax1.plot(ctx, [points[c] / 1e6 for c in ctx], "o", color=f"C{i}", label=f"{name}, measured")
        ax1.plot(ctx, [predicted[name][c] / 1e6 for c in ctx], "-", color=f"C{i}", lw=1, label=f"{name}, predicted")
    for label, x in marks.items():
        ax1.axvline(x, color="grey", ls="--", lw=0.8)
        ax1.annotate(label, (x, 0.97), xycoords=("data", "axes fraction"), fontsize=7, rotation=90, ha="right",
                     va="top")
    ax1.set(xlabel="keys the decoded token attends to", ylabel="MFLOPs per decoded token",
            title="tiny models: FLOP counter vs formula")
    ax1.legend(fontsize=7)
    for i, (label, points) in enumerate(curves.items()):
        ctx = sorted(c for c in points if c > 0)
        ax2.plot(ctx, [points[c] / 1e9 for c in ctx], "-", color=f"C{i}", label=label)
        weights = points[0]
        cross = weights / ((points[ctx[-1]] - weights) / ctx[-1])
        ax2.plot([cross], [2 * weights / 1e9], "o", color=f"C{i}")
    ax2.set(xscale="log", yscale="log", xlabel="keys in context", ylabel="GFLOPs per token",
            title="dots: attention = weights")
    ax2.legend(fontsize=7)
    return fig


def breakdown_figure(stored: dict[str, int], activated: dict[str, int], title: str):
    """Horizontal bars, stored and activated parameters per component on a log axis, each labelled with its size
    and its share of the stored total."""
    names = [k for k in stored if stored[k]]
    total = sum(stored.values())
    fig, (ax,) = plots.figure(1, width=7.2, height=3.6)
    y = torch.arange(len(names), dtype=torch.float32).numpy()
    ax.barh(y + 0.2, [stored[k] / 1e9 for k in names], 0.4, label="stored", color="C0")
    ax.barh(y - 0.2, [activated[k] / 1e9 for k in names], 0.4, label="activated per token", color="C1")
    for i, k in enumerate(names):
        size = f"{stored[k] / 1e9:,.3g}B" if stored[k] >= 1e8 else f"{stored[k] / 1e6:,.3g}M"
        share = f"{stored[k] / total:.1%}" if stored[k] >= total / 1000 else "< 0.1%"
        ax.text(stored[k] / 1e9 * 1.15, y[i] + 0.2, f"{size} ({share})", va="center", fontsize=8)
    ax.set_yticks(y, [LABELS.get(k, k.replace("_", " ")) for k in names])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(stored.values()) / 1e9 * 40)
    ax.set_xlabel("parameters (billions, log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig
