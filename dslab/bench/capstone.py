"""Capstone benchmark: training tokens/s of the cpu preset's MoE model vs a dense model with the same activated
parameters, in the same process on the CPU. Target: the MoE model at >= 0.8x the dense model's tokens/s.

Both models are ``capstone-cpu`` (MLA, one MTP module, width 128, 4 layers, 16 x 128 tokens per step): the MoE one
with its 16 routed experts (top-4) + 1 shared expert of width 64 in layers 1-3, the dense one with a SwiGLU of width
320 = 5 x 64 in every layer, so a token runs through the same FFN multiplications in both (the MoE adds its router,
2,064 parameters per layer). One timed step is what ``dslab.train.train_lm`` does per step: forward with the MTP
objective, backward, gradient clipping, AdamW, and for the MoE model the aux-loss-free bias update. The steps of the
two models are interleaved (``paired_ratios``) so that machine noise hits both alike. The headline is
MoE tokens/s ÷ dense tokens/s. MFU uses the course's one definition (``dslab.accounting.mfu``): lab 00's training
FLOPs per token (attention included, MTP modules not counted) × tokens/s ÷ the CPU's peak, which is the measured
FLOP/s of a 2048² float32 GEMM on this machine (``dslab.runtime.peak_flops``).

Measured on the course's shared 2-core CPU (2026-12-07, torch 2.13 CPU build, one torch thread, nothing else
running): **0.85x, 0.83x, 0.83x, 0.84x** in four runs (medians of 9 paired rounds; single rounds 0.70-1.01), e.g.
MoE 5,854 vs dense 6,748 tokens/s, MFU 32% vs 36% of a measured 94.7 GFLOP/s one-thread float32 GEMM. Before the
fused w1|w3 GEMM below: 0.82x on the same machine the same day (0.83x and 0.78x on 2026-12-02). With two threads a
job starting elsewhere threw single rounds between 0.1x and 3.2x: use one thread on a shared machine.

Where the MoE step loses (timed inside the step, one thread): the step is ~60 ms slower than the dense one
(~390 vs ~330 ms). The routed experts' forward and backward take ~115 ms over the four MoE FFNs (three layers and
the MTP module's block), of which the grouped GEMMs ~88 ms: each runs 16 experts of ~512 rows x 64 wide, ~2.4 ms a
call in the step against ~1.8 ms alone, while the dense twin's 2048 x 320 GEMMs keep ~75 GFLOP/s. The rest is
routing (an fp32 gate, top-k), the sort, one gather and one scatter-add per direction, and silu on [rows, 64]
slices. Fusing w1 and w3 into one 128-wide GEMM (``dslab.dispatch``) cut the experts' time by ~13% (115 -> 100
ms); smaller row blocks (1-4 MiB, to stay in the 1 MiB L2) did not help measurably. ``python -m dslab.bench moe``
measures the layer alone; attention, the embedding, the head, the MTP module's projection and AdamW cost the same in
both models.
"""

from __future__ import annotations

import statistics
import time

import torch

from dslab import accounting as acc
from dslab.bench import Result, paired_ratios
from dslab.capstone import preset_config
from dslab.model import Transformer
from dslab.runtime import peak_flops, peak_flops_source
from dslab.train import objective

MEASURED = "0.85x, 0.83x, 0.83x, 0.84x on a quiet 2-core CPU, one thread, 2026-12-07"


def dense_twin(args):
    """The dense model with the same activated parameters: every layer a SwiGLU of width (shared + top-k) x
    moe_inter_dim, no experts (the router's parameters are the only difference)."""
    width = (args.n_shared_experts + args.n_activated_experts) * args.moe_inter_dim
    return args.replace(name=f"{args.name}-dense", n_routed_experts=0, n_shared_experts=0, n_activated_experts=0,
                        n_expert_groups=1, n_limited_groups=1, gate_bias=False, inter_dim=width,
                        n_dense_layers=args.n_layers)


def _stepper(cfg, args, seed: int = 0):
    """One training step of a fresh model of ``args`` on fixed random tokens, as ``train_lm`` takes it."""
    torch.manual_seed(seed)
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, args.vocab_size, (cfg.train.batch_size, cfg.train.block_size), generator=gen)
    y = torch.randint(0, args.vocab_size, x.shape, generator=gen)
    moe = args.is_moe

    def step():
        out = objective(lambda t: model.forward_mtp(t), x, y, 0.3)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if moe:
            model.update_bias(0.001)

    return step


def run(quick: bool = False) -> Result:
    cfg = preset_config("cpu")
    if quick:
        cfg = cfg.replace(batch_size=4, block_size=64)
    moe_args, dense_args = cfg.model, dense_twin(cfg.model)
    tokens = cfg.train.batch_size * cfg.train.block_size
    moe_step, dense_step = _stepper(cfg, moe_args), _stepper(cfg, dense_args)
    ratios = paired_ratios(moe_step, dense_step, rounds=3 if quick else 9)  # time(MoE) / time(dense)
    times = {}
    for name, fn in (("moe", moe_step), ("dense", dense_step)):
        t0 = time.perf_counter()
        for _ in range(1 if quick else 3):
            fn()
        times[name] = (time.perf_counter() - t0) / (1 if quick else 3)
    peak = peak_flops("cpu")
    mfu = {n: acc.mfu(acc.training_flops_per_token(a, cfg.train.block_size), tokens / times[n], peak)
           for n, a in (("moe", moe_args), ("dense", dense_args))}
    value = 1 / statistics.median(ratios)
    details = {
        "models": f"{moe_args.name} (MoE) vs its dense twin, {tokens} tokens per step, {torch.get_num_threads()} "
                  f"thread(s)",
        "activated params (MoE, dense)": f"{acc.activated_params(moe_args):,}, {acc.activated_params(dense_args):,}",
        "total params (MoE, dense)": f"{acc.total_params(moe_args):,}, {acc.total_params(dense_args):,}",
        "tokens/s (MoE, dense)": f"{tokens / times['moe']:,.0f}, {tokens / times['dense']:,.0f}",
        "MFU (MoE, dense)": f"{mfu['moe']:.1%}, {mfu['dense']:.1%}",
        "peak": f"{peak / 1e9:.1f} GFLOP/s ({peak_flops_source('cpu')})",
        "per-round MoE/dense tokens/s": ", ".join(f"{1 / r:.2f}" for r in ratios),
        "measured before": MEASURED,
    }
    return Result("capstone", value, "x", ">=", 0.8, details)
