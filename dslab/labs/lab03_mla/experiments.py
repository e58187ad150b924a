"""Lab 03's experiment harnesses: attention variants of one shape, tiny models trained the same way, the low-rank
structure of a trained model's keys and values, what a node's memory allows when serving (V2's 5.76x), the three MLA
decode paths timed, and the notebook's figures."""

from __future__ import annotations

import torch

from dslab import accounting, configs, plots
from dslab.bench.mla import bench_args
from dslab.configs import ModelArgs
from dslab.mla import ATTN_IMPLS, MLA
from dslab.model import Transformer
from dslab.runtime import num_threads, seed_everything, timeit
from dslab.train import TrainConfig, train_lm

HEAD_DIM, ROPE_DIM = 128, 64  # V2/V3's d_h and d^R_h


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


def train_tiny(preset: str, train_ids: torch.Tensor, val_ids: torch.Tensor, steps: int, eval_every: int, seed: int,
               vocab_size: int, device: torch.device | str = "cpu") -> tuple[Transformer, list[dict]]:
    """A fresh model of course preset ``preset`` trained ``steps`` steps (batch 16 x 64) -> (model, history)."""
    seed_everything(seed)
    model = Transformer(configs.load(preset).replace(vocab_size=vocab_size)).to(device)
    cfg = TrainConfig(steps=steps, eval_every=eval_every, eval_batches=8, seed=seed)
    return model, train_lm(model, train_ids, val_ids, cfg)


@torch.no_grad()
def keys_and_values(model: Transformer, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (K, V) [tokens, n_kv_heads * head_dim] from the ``wk``/``wv`` projections (before RoPE) of a
    classic-attention model run on tokens [B, S]."""
    found, hooks = {}, []
    for i, block in enumerate(model.layers):
        for name in ("wk", "wv"):
            def keep(module, inputs, out, key=(i, name)):
                found[key] = out.flatten(0, 1).float().cpu()
            hooks.append(getattr(block.attn, name).register_forward_hook(keep))
    was_training = model.training
    model.train()  # the uncached path takes any batch size; nothing is updated
    try:
        model(tokens.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return [(found[(i, "wk")], found[(i, "wv")]) for i in range(len(model.layers))]


def lowrank_error(x: torch.Tensor) -> torch.Tensor:
    """Relative Frobenius error of the best rank-r approximation of the centred x [N, D], for r = 0..min(N, D).

    Eckart-Young: the best rank-r approximation keeps the r largest singular values, so the error is the energy in
    the others. A constant offset (the mean over rows) is removed first: it costs one stored vector, not a rank.
    """
    energy = torch.linalg.svdvals(x - x.mean(0)).pow(2)
    tail = energy.flip(0).cumsum(0).flip(0)  # energy left out when keeping the first r singular values
    return torch.cat([tail / energy.sum(), torch.zeros(1)]).sqrt()


def kv_lowrank_errors(model: Transformer, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """``lowrank_error`` of the keys, the values and both side by side [K V], averaged over the layers of a
    classic-attention model run on tokens [B, S]: {"K": [r], "V": [r], "[K V]": [r]}."""
    per_layer = keys_and_values(model, tokens)
    kinds = {"K": [k for k, _ in per_layer], "V": [v for _, v in per_layer],
             "[K V]": [torch.cat(kv, 1) for kv in per_layer]}
    return {kind: torch.stack([lowrank_error(x) for x in xs]).mean(0) for kind, xs in kinds.items()}


# ------------------------------------------------------------------------------------------ serving capacity
# The 5.76x of V2 §3.2.3 was measured on one node of 8 H800 GPUs. The hardware figures below are NVIDIA's datasheet
# numbers for the H100 SXM, which the H800 shares apart from its interconnect (assumed here, not measured).
NODE_GPUS = 8
GPU_MEMORY = 80e9  # bytes of HBM per GPU
GPU_BANDWIDTH = 3.35e12  # bytes per second of HBM traffic per GPU
GPU_BF16_FLOPS = 989e12  # dense BF16 tensor-core peak per GPU


def decode_bounds(args: ModelArgs, weight_bits: float, cache_bits: float, context: int,
                  memory: float = NODE_GPUS * GPU_MEMORY, bandwidth: float = NODE_GPUS * GPU_BANDWIDTH,
                  flops: float = NODE_GPUS * GPU_BF16_FLOPS, attn_impl: str = "absorb") -> dict[str, float]:
    """How fast a node can decode ``args`` when its memory is filled with sequences of ``context`` cached tokens.

    Assumptions: the weights are stored at ``weight_bits``, the cache at ``cache_bits`` per element; nothing else
    takes memory (no activations, no fragmentation); every sequence holds ``context`` tokens; with that many
    sequences every expert is used, so a decode step reads all the weights once plus every cached token once.
    Returns the sequences that fit, the step's bytes and FLOPs, and two ceilings on tokens per second: the
    memory-bound one (bandwidth / bytes per step, times the sequences) and the compute-bound one (peak FLOPs /
    FLOPs per token). The smaller one binds.
    """
    weights = accounting.total_params(args) * weight_bits / 8
    per_sequence = accounting.kv_cache_bytes(args, context, cache_bits)
    sequences = int((memory - weights) // per_sequence)
    step_bytes = weights + sequences * per_sequence
    flops_per_token = accounting.forward_flops_per_token(args, context, attn_impl)
    memory_bound = sequences * bandwidth / step_bytes
    compute_bound = flops / flops_per_token
    return {"weights_GB": weights / 1e9, "cache_per_sequence_MB": per_sequence / 1e6, "sequences": sequences,
            "flops_per_byte": sequences * flops_per_token / step_bytes, "memory_bound_tok_s": memory_bound,
            "compute_bound_tok_s": compute_bound, "bound_tok_s": min(memory_bound, compute_bound)}


# ---------------------------------------------------------------------------------------------- decode timing
@torch.inference_mode()
def time_decode_paths(n_heads: int = 16, context: int = 1024, rounds: int = 5, batch: int = 4) -> dict[str, dict]:
    """One decode step at position context - 1 of ``dslab.mla.MLA`` in each of its modes, with the benchmark's
    shape (``dslab.bench.mla.bench_args``), on one thread -> {mode: {"ms": median time, "cache_mib": cache size}}.

    A step's work does not depend on what the cache holds, so the caches are left as allocated (no prefill).
    """
    args = bench_args(n_heads, context)
    torch.manual_seed(0)
    x = torch.randn(batch, 1, args.dim, generator=torch.Generator().manual_seed(1))
    found = {}
    with num_threads(1):
        for impl in ATTN_IMPLS:
            m = MLA(args, batch, impl).eval()
            found[impl] = {"ms": 1e3 * timeit(lambda m=m: m(x, context - 1), repeats=rounds),
                           "cache_mib": m.cache_bytes() / 2**20}
    return found


# ---------------------------------------------------------------------------------------------------- figures
def lowrank_figure(errors: dict[str, dict[str, torch.Tensor]], d_c: int):
    """Left: relative error of the best rank-r approximation of K, V and [K V], trained and untrained, with the
    latent width d_c marked. Right: the first 32 ranks on a log scale, [K V] against the worse of K and V."""
    fig, (ax1, ax2) = plots.figure(2)
    for label, style in (("trained", "-"), ("untrained", ":")):
        for kind, color in (("K", "C0"), ("V", "C1"), ("[K V]", "C2")):
            ax1.plot(errors[label][kind], style, color=color, label=f"{kind}, {label}")
    ax1.axvline(d_c, color="grey", lw=0.8, ls="--")
    ax1.text(d_c + 2, 0.9, f"d_c = {d_c}\n(tiny-mla)", fontsize=8)
    ax1.set(xlabel="rank r", ylabel="relative error of the rank-r approximation", xlim=(0, 130),
            title="keys and values of tiny-mha, averaged over layers")
    ax1.legend(fontsize=7)
    ranks = torch.arange(1, 33)
    for label, style in (("trained", "-"), ("untrained", ":")):
        ax2.semilogy(ranks, errors[label]["[K V]"][1:33], style, color="C2", label=f"[K V], {label}")
        ax2.semilogy(ranks, torch.maximum(errors[label]["K"], errors[label]["V"])[1:33], style, color="C3",
                     label=f"worse of K, V alone, {label}")
    ax2.set(xlabel="rank r", ylabel="relative error (log)", title="joint [K V] needs no more rank than K or V alone")
    ax2.legend(fontsize=7)
    return fig


def rope_figure(err_coupled: torch.Tensor, err_decoupled: torch.Tensor):
    """|absorbed score - exact score| per cached position, for RoPE on k^C and for decoupled RoPE."""
    fig, (ax,) = plots.figure(1, width=6.5)
    ax.semilogy(err_coupled.clamp(min=1e-9), ".-", label="RoPE on $k^C$: one absorbed query")
    ax.semilogy(err_decoupled.clamp(min=1e-9), ".-", label="decoupled RoPE (MLA): float32 rounding only")
    ax.set(xlabel=f"position t of the cached token (the query is at {len(err_coupled) - 1})",
           ylabel="|absorbed score - exact score|", title="absorbing $W^{UK}$ is exact only if the keys carry no "
                                                        "rotation")
    ax.legend(fontsize=8)
    return fig


def decode_figure(decode: dict[int, dict], n_heads: int):
    """Time per decoded token and cache memory against the context, absorbed vs naive (``bench.mla.measure``)."""
    contexts = sorted(decode)
    fig, (ax1, ax2) = plots.figure(2)
    for impl, label in (("absorb", "absorbed"), ("naive", "naive (head-major cache)")):
        ax1.plot(contexts, [decode[c]["ms"][impl] for c in contexts], "o-", label=label)
        ax2.plot(contexts, [decode[c]["cache_mib"][impl] for c in contexts], "o-", label=label)
    ax1.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="ms per decoded token (batch 4)",
            title=f"time per token, {n_heads} heads, one thread")
    ax2.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="MiB (batch 4, one layer, float32)",
            title="cache memory")
    for ax in (ax1, ax2):
        ax.set_xticks(contexts, [f"{c:,}" for c in contexts])
        ax.set_xticks([], minor=True)
        ax.legend(fontsize=8)
    return fig


def heads_figure(by_heads: dict[int, dict], context: int, prefill: dict, prefill_len: int, prefill_heads: int):
    """Absorbed speed / naive speed against the number of heads (decode), with the prefill point."""
    heads = sorted(by_heads)
    fig, (ax,) = plots.figure(1, width=6)
    ax.plot(heads, [by_heads[h]["speedup"] for h in heads], "o-", label=f"decode, context {context:,}")
    ax.plot([prefill_heads], [prefill["speedup"]], "s", color="C3", label=f"prefill of {prefill_len} tokens")
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    for h in heads:
        ax.annotate(f"cache x{by_heads[h]['cache_ratio']:.1f}", (h, by_heads[h]["speedup"]), fontsize=7,
                    textcoords="offset points", xytext=(0, 7), ha="center")
    ax.set(xscale="log", xlabel="query heads", ylabel="absorbed speed / naive speed",
           title="absorption wins when the naive cache is much larger")
    ax.set_xticks(heads, [str(h) for h in heads])
    ax.set_xticks([], minor=True)
    ax.margins(x=0.08, y=0.15)
    ax.legend(fontsize=8)
    return fig


def quality_figure(runs: dict, kinds: list[str], seeds: list[int], steps: int):
    """Validation loss during training, one colour per attention kind, one line style per seed."""
    fig, (ax,) = plots.figure(1, width=6)
    for i, kind in enumerate(kinds):
        for seed, style in zip(seeds, ("o-", "s--", "^:")):
            rows = [r for r in runs[(kind, seed)][1] if "val_loss" in r]
            ax.plot([r["step"] + 1 for r in rows], [r["val_loss"] for r in rows], style, color=f"C{i}",
                    label=f"{kind}, seed {seed}")
    ax.set(xlabel="training step", ylabel="validation loss (nats per character)",
           title=f"tiny models, {steps} steps of 16 x 64 characters")
    ax.legend(fontsize=7, ncols=3)
    return fig
