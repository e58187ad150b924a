"""Lab 03's KV-memory explorer: heads, KV heads, latent rank, depth, precision and context -> the KV cache of MHA,
GQA, MQA and MLA (absorbed, and naive for contrast) as the context grows."""

from __future__ import annotations

import numpy as np

from dslab import accounting as acc
from dslab import plots
from dslab.configs import ModelArgs
from dslab.mla import cache_elements_per_layer

HEAD_DIM, ROPE_DIM = 128, 64  # V2/V3's d_h and d^R_h
GIB = 2**30


def architectures(n_heads: int, n_kv_heads: int, kv_lora_rank: int, n_layers: int) -> dict[str, ModelArgs]:
    """The four attention kinds with the same heads, width and depth (d_h = 128; MLA: d_R = 64, no MoE).

    GQA's KV heads are clamped to n_heads (both are powers of two in the widget, so they divide).
    """
    base = dict(dim=n_heads * HEAD_DIM, n_heads=n_heads, n_layers=n_layers, n_routed_experts=0, n_shared_experts=0,
                n_activated_experts=0, n_dense_layers=0)
    kv = min(n_kv_heads, n_heads)
    return {
        "MHA": ModelArgs(name="MHA", attn="mha", head_dim=HEAD_DIM, **base),
        f"GQA-{kv}": ModelArgs(name=f"GQA-{kv}", attn="gqa", head_dim=HEAD_DIM, n_kv_heads=kv, **base),
        "MQA": ModelArgs(name="MQA", attn="mqa", head_dim=HEAD_DIM, **base),
        "MLA": ModelArgs(name="MLA", attn="mla", kv_lora_rank=kv_lora_rank, qk_nope_head_dim=HEAD_DIM,
                         qk_rope_head_dim=ROPE_DIM, v_head_dim=HEAD_DIM, q_lora_rank=0, **base),
    }


def kv_memory(n_heads: int = 128, n_kv_heads: int = 8, kv_lora_rank: int = 512, n_layers: int = 61, bits: int = 16,
              context: int = 131072):
    """KV cache of one sequence of ``context`` tokens for MHA, GQA, MQA and MLA at ``bits`` per element.

    Defaults are V3's attention (128 heads, d_c 512, 61 layers, 128K context) in BF16. "MLA naive" is the cache the
    same MLA would need without weight absorption (H·(d_nope + d_R + d_v) per layer). Returns (numbers, figure).
    """
    archs = architectures(n_heads, n_kv_heads, kv_lora_rank, n_layers)
    per_token = {name: acc.kv_bytes_per_token(a, bits) for name, a in archs.items()}
    per_token["MLA naive"] = cache_elements_per_layer(archs["MLA"], "naive") * n_layers * bits / 8
    mla, mha = per_token["MLA"], per_token["MHA"]
    numbers = {f"{name} KiB/token": round(b / 1024, 2) for name, b in per_token.items()}
    numbers.update({
        f"MHA GiB at {context:,} tokens": round(mha * context / GIB, 2),
        f"MLA GiB at {context:,} tokens": round(mla * context / GIB, 2),
        "MLA / MHA": round(mla / mha, 4),
        "MLA = GQA with this many KV heads": round((kv_lora_rank + ROPE_DIM) / (2 * HEAD_DIM), 2),
    })

    fig, (ax1, ax2) = plots.figure(2, width=5.2, height=3.6)
    ctx = np.logspace(10, 20, 41, base=2)
    for name, b in per_token.items():
        ax1.plot(ctx, b * ctx / GIB, label=name, ls="--" if name == "MLA naive" else "-")
    ax1.axvline(context, color="grey", lw=0.8, ls=":")
    ax1.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="KV cache (GiB, one sequence)")
    ax1.set_title(f"{n_layers} layers, {n_heads} heads, {bits}-bit cache", fontsize=10)
    ax1.legend(fontsize=8)
    plots.grouped_bars(ax2, list(per_token), {"KiB": [b / 1024 for b in per_token.values()]},
                       ylabel="KiB per token", log=True, fmt="{:,.1f}")
    ax2.set_title(f"per token; at {context:,} tokens MLA needs {numbers[f'MLA GiB at {context:,} tokens']} GiB",
                  fontsize=10)
    return numbers, fig


CONTEXTS = [2**k for k in range(10, 21)]  # 1K .. 1M tokens


def kv_memory_controls() -> dict:
    """The explorer's controls, one per keyword of ``kv_memory``, set to its defaults."""
    import ipywidgets as W

    powers = [2**k for k in range(8)]
    return {
        "n_heads": W.Dropdown(options=[8, 16, 32, 64, 128], value=128, description="heads"),
        "n_kv_heads": W.Dropdown(options=powers, value=8, description="GQA KV heads"),
        "kv_lora_rank": W.IntSlider(512, min=64, max=2048, step=64, description="kv_lora_rank"),
        "n_layers": W.IntSlider(61, min=1, max=128, description="layers"),
        "bits": W.Dropdown(options=[4, 6, 8, 16, 32], value=16, description="KV bits"),
        "context": W.SelectionSlider(options=[(f"{c // 1024}K", c) for c in CONTEXTS], value=131072,
                                     description="context"),
    }


def kv_memory_widget():
    """Controls for ``kv_memory``; headless, the static default figure."""
    from dslab.widgets import explore

    return explore(kv_memory, kv_memory_controls())
