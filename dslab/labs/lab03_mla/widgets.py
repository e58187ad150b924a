"""Lab 03's KV-memory explorer: heads, KV heads, latent rank, depth, precision and context -> the KV cache of MHA,
GQA, MQA and MLA (its latent cache, and for contrast the expanded per-head keys and values that the official naive
mode caches) as the context grows."""

from __future__ import annotations

import numpy as np

from dslab import accounting as acc
from dslab import plots
from dslab.labs.lab03_mla.experiments import HEAD_DIM, ROPE_DIM, architectures
from dslab.mla import cache_elements_per_layer

GIB = 2**30


def kv_memory(n_heads: int = 128, n_kv_heads: int = 8, kv_lora_rank: int = 512, n_layers: int = 61, bits: int = 16,
              context: int = 131072):
    """KV cache of one sequence of ``context`` tokens for MHA, GQA, MQA and MLA at ``bits`` per element.

    Defaults are V3's attention (128 heads, d_c 512, 61 layers, 128K context) in BF16. "MLA (latent)" caches
    d_c + d_R numbers per layer, with absorption or without it (then the latent is up-projected at every step);
    "MLA (expanded K/V)" is what the official naive mode chooses to cache instead, H·(d_nope + d_R + d_v) per layer.
    Returns (numbers, figure).
    """
    archs = architectures(n_heads, n_kv_heads, kv_lora_rank, n_layers)
    per_token = {"MLA (latent)" if name == "MLA" else name: acc.kv_bytes_per_token(a, bits)
                 for name, a in archs.items()}
    per_token["MLA (expanded K/V)"] = cache_elements_per_layer(archs["MLA"], "naive") * n_layers * bits / 8
    mla, mha = per_token["MLA (latent)"], per_token["MHA"]
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
        ax1.plot(ctx, b * ctx / GIB, label=name, ls="--" if name == "MLA (expanded K/V)" else "-")
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
