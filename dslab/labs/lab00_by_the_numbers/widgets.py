"""Lab 00's config explorer: change DeepSeek-V3's expert count, top-k, latent rank, depth and KV precision and see
total/activated parameters and the KV cache per token move."""

from __future__ import annotations

from dslab import accounting as acc
from dslab import plots
from dslab.configs import load
from dslab.labs.lab00_by_the_numbers.experiments import LABELS


def config_explorer(n_routed_experts: int = 256, n_activated_experts: int = 8, kv_lora_rank: int = 512,
                    n_layers: int = 61, kv_bits: int = 16, base: str = "deepseek-v3-671b"):
    """DeepSeek-V3 (or ``base``) with five fields changed -> (numbers, figure).

    Routing groups do not change parameter counts, so the explorer routes without them (n_expert_groups = 1).
    Numbers: total and activated parameters (B), and the KV cache per token at ``kv_bits`` bits per element for
    MLA and, for scale, for multi-head attention with the same heads (128 keys and values of 128 per layer in V3).
    Both caches use the same precision, so the bar chart compares the attention designs, not the number formats.
    """
    args = load(base).replace(n_routed_experts=n_routed_experts, n_activated_experts=n_activated_experts,
                              kv_lora_rank=kv_lora_rank, n_layers=n_layers, n_expert_groups=1, n_limited_groups=1)
    mha = args.replace(attn="mha", head_dim=args.qk_nope_head_dim, n_kv_heads=0)
    numbers = {
        "total params (B)": round(acc.total_params(args) / 1e9, 2),
        "activated params (B)": round(acc.activated_params(args) / 1e9, 2),
        "activated share": round(acc.activated_params(args) / acc.total_params(args), 4),
        "KV bits per element": kv_bits,
        "MLA KV bytes/token": acc.kv_bytes_per_token(args, kv_bits),
        "MHA KV bytes/token (same heads)": acc.kv_bytes_per_token(mha, kv_bits),
    }
    total, active = acc.param_breakdown(args), acc.param_breakdown(args, activated=True)
    fig, (ax1, ax2) = plots.figure(2, width=5.2, height=3.6)
    names = [k for k in total if total[k]]
    plots.grouped_bars(ax1, [LABELS[k] for k in names],
                       {"stored": [total[k] / 1e9 for k in names], "activated": [active[k] / 1e9 for k in names]},
                       ylabel="parameters (billions)", log=True)
    ax1.set_title(f"{numbers['total params (B)']}B stored, {numbers['activated params (B)']}B active", fontsize=10)
    kv = {"MLA": numbers["MLA KV bytes/token"], "MHA, same heads": numbers["MHA KV bytes/token (same heads)"]}
    plots.grouped_bars(ax2, list(kv), {"bytes": [v / 1024 for v in kv.values()]}, ylabel="KiB per token",
                       fmt="{:,.1f}", log=True)
    ax2.set_title(f"KV cache per token, {n_layers} layers, {kv_bits}-bit elements", fontsize=10)
    return numbers, fig


def config_explorer_widget():
    """Sliders for config_explorer; headless, the static default figure."""
    import ipywidgets as W

    from dslab.widgets import explore

    controls = {
        "n_routed_experts": W.IntSlider(256, min=8, max=512, step=8, description="experts"),
        "n_activated_experts": W.IntSlider(8, min=1, max=16, description="top-k"),
        "kv_lora_rank": W.IntSlider(512, min=64, max=2048, step=64, description="kv_lora_rank"),
        "n_layers": W.IntSlider(61, min=4, max=128, description="layers"),
        "kv_bits": W.Dropdown(options=[4, 6, 8, 16, 32], value=16, description="KV bits"),
    }
    return explore(config_explorer, controls)
