"""MLA decoding: time per token of the absorbed path against the naive one, at a 4096-token context on the CPU.

V3's proportions scaled down (d=512, 16 heads, d_nope 64, d_R 32, d_v 64, d_c 256): the absorbed path reads one
[T, c + r] latent cache per sequence instead of H full keys and values, so it wins once H·(d_nope + d_R + d_v) is
well above c + r, even though it does more arithmetic per cached token. The baseline is the faster naive layout
(head-major [B, H, T, D]); the official [B, T, H, D] layout is reported too. The caches are filled with what a
prefill would write, then one token is decoded at position T - 1. ``measure_prefill`` times the opposite regime, a
whole prompt at once, where every cached key serves many queries and expanding K and V once is the cheaper order.
"""

from __future__ import annotations

import torch

from dslab.bench import Result, paired_ratio
from dslab.configs import ModelArgs
from dslab.mla import MLA, cache_elements_per_layer, expand_latent, latent_cache_step
from dslab.runtime import num_threads, timeit

BATCH = 4


def bench_args(n_heads: int = 16, context: int = 4096) -> ModelArgs:
    """The benchmark's MLA shape: V3 divided by 14 in width and 8 in heads (q_lora_rank 0, as V2-Lite)."""
    return ModelArgs(name=f"mla-bench-h{n_heads}", dim=512, n_heads=n_heads, n_layers=1, q_lora_rank=0,
                     kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                     max_seq_len=context, original_seq_len=context)


def _modules(args: ModelArgs, batch: int, official: bool) -> dict[str, MLA]:
    """The implementations in eval (decoding) mode, sharing one set of weights."""
    torch.manual_seed(0)
    mods = {"absorb": MLA(args, batch, "absorb"), "naive": MLA(args, batch, "naive")}
    if official:
        mods["naive_official"] = MLA(args, batch, "naive", cache_layout="bthd")
    for m in mods.values():
        m.load_state_dict(mods["absorb"].state_dict())
        m.eval()
    return mods


def _prefilled(args: ModelArgs, h: torch.Tensor, official: bool = True) -> dict[str, MLA]:
    """The implementations with caches holding what a prefill of h [B, T - 1, dim] would have written."""
    mods = _modules(args, h.shape[0], official)
    ref, t = mods["absorb"], h.shape[1]
    c_kv, k_pe = latent_cache_step(h, ref.wkv_a.weight, ref.kv_norm.weight, ref.freqs_cis[:t], ref.kv_norm.eps)
    k_nope, v = expand_latent(c_kv, ref.wkv_b.weight, args.n_heads, args.qk_nope_head_dim, args.v_head_dim)
    k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, args.n_heads, -1)], dim=-1)
    ref.kv_cache[:, :t], ref.pe_cache[:, :t] = c_kv, k_pe
    mods["naive"].k_cache[:, :, :t], mods["naive"].v_cache[:, :, :t] = k.transpose(1, 2), v.transpose(1, 2)
    if official:
        mods["naive_official"].k_cache[:, :t], mods["naive_official"].v_cache[:, :t] = k, v
    return mods


@torch.inference_mode()
def measure(n_heads: int = 16, context: int = 4096, rounds: int = 7, official: bool = True, batch: int = BATCH,
            threads: int | None = None) -> dict:
    """One decode step at position context - 1: per-token times (ms), absorbed/naive speedups, cache sizes (whole
    preallocated caches, MiB) and the paths' max output difference. official=False skips the [B, T, H, D] layout;
    threads sets torch's intra-op threads for the measurement (None: the current setting)."""
    with num_threads(threads):
        return _measure(n_heads, context, rounds, official, batch)


def _measure(n_heads: int, context: int, rounds: int, official: bool, batch: int) -> dict:
    args = bench_args(n_heads, context)
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(batch, context, args.dim, generator=gen)
    mods = _prefilled(args, h[:, :-1], official)
    x, pos = h[:, -1:], context - 1
    steps = {name: (lambda m=m: m(x, pos)) for name, m in mods.items()}
    outs = {name: step() for name, step in steps.items()}
    ms = {name: 1e3 * timeit(step, repeats=rounds) for name, step in steps.items()}
    result = {
        "speedup": 1 / paired_ratio(steps["absorb"], steps["naive"], rounds=rounds),
        "ms": ms,
        "cache_ratio": mods["naive"].cache_bytes() / mods["absorb"].cache_bytes(),
        "cache_ratio_formula": cache_elements_per_layer(args, "naive") / cache_elements_per_layer(args, "absorb"),
        "cache_mib": {k: m.cache_bytes() / 2**20 for k, m in mods.items() if k != "naive_official"},
        "max_abs_diff": max((o - outs["absorb"]).abs().max().item() for o in outs.values()),
    }
    if official:
        result["speedup_vs_official"] = 1 / paired_ratio(steps["absorb"], steps["naive_official"],
                                                         rounds=max(3, rounds // 2))
    return result


@torch.inference_mode()
def measure_prefill(n_heads: int = 16, seqlen: int = 512, rounds: int = 5, batch: int = 1,
                    threads: int | None = None) -> dict:
    """A whole prompt of seqlen tokens from an empty cache: ms per prefill of each path and absorbed/naive speedup
    (< 1 means absorption loses: it does H·(2c + r) multiply-adds per query-key pair instead of
    H·(d_nope + d_R + d_v))."""
    args = bench_args(n_heads, seqlen)
    mods = _modules(args, batch, official=False)
    x = torch.randn(batch, seqlen, args.dim, generator=torch.Generator().manual_seed(2))
    steps = {name: (lambda m=m: m(x, 0)) for name, m in mods.items()}
    with num_threads(threads):
        return {"ms": {name: 1e3 * timeit(step, repeats=rounds) for name, step in steps.items()},
                "speedup": 1 / paired_ratio(steps["absorb"], steps["naive"], rounds=rounds)}


def run(quick: bool = False) -> Result:
    context = 512 if quick else 4096
    m = measure(16, context, rounds=3 if quick else 9)
    details = {
        "setup": f"CPU float32, batch {BATCH}, context {context}, d=512, 16 heads, d_nope 64, d_R 32, d_v 64, d_c 256,"
                 f" {torch.get_num_threads()} threads",
        "ms_per_token": {k: round(v, 3) for k, v in m["ms"].items()},
        "absorbed_vs_naive_head_major": f"{m['speedup']:.2f}x",
        "absorbed_vs_naive_official_layout": f"{m['speedup_vs_official']:.2f}x",
        "cache_ratio_naive_over_absorbed": f"{m['cache_ratio']:.4f} (H·(d_nope + d_R + d_v)/(d_c + d_R) = "
                                           f"{m['cache_ratio_formula']:.4f})",
        "cache_mib": {k: round(v, 2) for k, v in m["cache_mib"].items()},
        "max_abs_diff_naive_vs_absorbed": f"{m['max_abs_diff']:.2e}",
    }
    if not quick:
        m8 = measure(8, context, rounds=5, official=False)
        details["absorbed_vs_naive_head_major_8_heads"] = f"{m8['speedup']:.2f}x (cache ratio {m8['cache_ratio']:.3f})"
        p = measure_prefill(16, 1024, rounds=3)
        details["prefill_1024_tokens_absorbed_vs_naive"] = f"{p['speedup']:.2f}x"
    return Result(name="mla", value=m["speedup"], unit="x", op=">=", target=1.5, details=details)
