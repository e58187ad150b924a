"""Exercises of lab 03 "MLA": the KV-cache formula, the latent cache step and weight absorption.

Hidden cases vary the architecture, the shapes and the positions, so an answer that only fits the public cases (or
hard-codes one model's numbers) fails them. Tensor inputs are seeded from the grader's rng.
"""

from __future__ import annotations

import random

import torch

from dslab import accounting, mla
from dslab.configs import ModelArgs, load
from dslab.course.exercises import Case, Exercise, compare_close
from dslab.nn import rotary_freqs


# --------------------------------------------------------------------------------------------- 3.1 KV-cache bytes
def _random_args(rng: random.Random, attn: str) -> ModelArgs:
    """A valid dense model of kind ``attn`` with random heads, widths and depth."""
    heads = rng.choice([4, 8, 16, 32, 64, 128])
    base = dict(name="hidden", dim=heads * 64, n_heads=heads, n_layers=rng.randint(2, 96), n_routed_experts=0,
                n_shared_experts=0, n_activated_experts=0, n_dense_layers=0)
    if attn == "mla":
        return ModelArgs(attn="mla", kv_lora_rank=rng.choice([32, 64, 128, 256, 512, 1024]),
                         qk_rope_head_dim=rng.choice([8, 16, 32, 64]), qk_nope_head_dim=rng.choice([32, 64, 128]),
                         v_head_dim=rng.choice([32, 64, 128]), **base)
    kv = {"mha": 0, "mqa": 0, "gqa": rng.choice([d for d in (2, 4, 8) if heads % d == 0 and d < heads])}[attn]
    return ModelArgs(attn=attn, n_kv_heads=kv, head_dim=rng.choice([0, 64, 96, 128]), **base)


def _kv_bytes_public() -> list[Case]:
    return [Case((load("deepseek-v2-236b"), 1, 6), "deepseek-v2-236b, 1 token, 6 bits"),
            Case((load("deepseek-llm-67b"), 1, 16), "deepseek-llm-67b (GQA-8), 1 token, BF16"),
            Case((load("deepseek-v3-671b"), 128 * 1024, 8), "deepseek-v3-671b, 128K tokens, FP8"),
            Case((load("tiny-mha"), 4 * 256, 32), "tiny-mha, 4 x 256 tokens, float32"),
            Case((load("tiny-gqa").replace(attn="mqa", n_kv_heads=1), 1000, 16), "tiny-gqa as MQA, 1000 tokens")]


def _kv_bytes_hidden(rng: random.Random) -> list[Case]:
    kinds = ["mha", "gqa", "mqa", "mla", "mla", "gqa"]
    return [Case((_random_args(rng, kind), rng.randint(1, 200_000), rng.choice([4, 6, 8, 16, 32])),
                 f"random {kind.upper()} #{i}") for i, kind in enumerate(kinds)]


# ------------------------------------------------------------------------------------------ 3.2 latent cache step
def latent_cache_at(x: torch.Tensor, wkv_a: torch.Tensor, kv_norm_weight: torch.Tensor,
                    start_pos: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``mla.latent_cache_step`` for tokens at positions start_pos.. with plain RoPE (base 10000, no YaRN): the
    exercise's signature, positions in place of the complex RoPE table so that every input is plain data."""
    freqs_cis = rotary_freqs(wkv_a.shape[0] - kv_norm_weight.shape[0], start_pos + x.shape[1])[start_pos:]
    return mla.latent_cache_step(x, wkv_a, kv_norm_weight, freqs_cis)


def _cache_step_case(gen: torch.Generator, batch: int, seqlen: int, dim: int, d_c: int, d_r: int,
                     start_pos: int) -> tuple:
    x = torch.randn(batch, seqlen, dim, generator=gen)
    wkv_a = torch.randn(d_c + d_r, dim, generator=gen) / dim**0.5
    kv_norm_weight = 0.5 + torch.rand(d_c, generator=gen)
    return x, wkv_a, kv_norm_weight, start_pos


def _cache_step_public() -> list[Case]:
    gen = torch.Generator().manual_seed(3)
    return [Case(_cache_step_case(gen, 1, 4, 16, 8, 4, 0), "prefill of 4 tokens, d_c 8, d_R 4"),
            Case(_cache_step_case(gen, 2, 1, 16, 8, 4, 7), "decode 1 token at position 7"),
            Case(_cache_step_case(gen, 2, 3, 24, 12, 8, 30), "3 tokens at positions 30..32, d_R 8")]


def _cache_step_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        shape = (rng.randint(1, 3), rng.randint(1, 6), rng.choice([8, 16, 32]), rng.choice([4, 8, 16, 24]),
                 rng.choice([2, 4, 8, 16]), rng.choice([0, 0, rng.randint(1, 500)]))
        cases.append(Case(_cache_step_case(gen, *shape), f"random step #{i} (batch, tokens, width, d_c, d_R and "
                                                          f"start_pos drawn at random)"))
    return cases


# --------------------------------------------------------------------------------------------- 3.3 absorption
def _absorb_case(gen: torch.Generator, batch: int, seqlen: int, cached: int, heads: int, nope: int, d_r: int,
                 d_v: int, d_c: int) -> tuple:
    q_nope = torch.randn(batch, seqlen, heads, nope, generator=gen)
    q_pe = torch.randn(batch, seqlen, heads, d_r, generator=gen)
    kv_cache = torch.randn(batch, cached, d_c, generator=gen)
    pe_cache = torch.randn(batch, cached, d_r, generator=gen)
    wkv_b = torch.randn(heads * (nope + d_v), d_c, generator=gen) / d_c**0.5
    return q_nope, q_pe, kv_cache, pe_cache, wkv_b, (nope + d_r) ** -0.5


def _absorb_public() -> list[Case]:
    gen = torch.Generator().manual_seed(4)
    return [Case(_absorb_case(gen, 1, 1, 5, 2, 4, 2, 4, 8), "decode 1 token, 5 cached, 2 heads"),
            Case(_absorb_case(gen, 2, 1, 9, 4, 8, 4, 6, 16), "batch 2, 4 heads, d_v 6 != d_nope 8"),
            Case(_absorb_case(gen, 1, 3, 7, 3, 4, 2, 4, 6), "3 queries, each sees all 7 cached tokens")]


def _absorb_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        shape = (rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 24), rng.choice([1, 2, 3, 4, 8]),
                 rng.choice([4, 8, 16]), rng.choice([2, 4, 8]), rng.choice([4, 6, 8, 16]), rng.choice([8, 12, 32]))
        cases.append(Case(_absorb_case(gen, *shape), f"random #{i} (B, S, T, H, d_nope, d_R, d_v, d_c drawn at "
                                                      f"random)"))
    return cases


EXERCISES = [
    Exercise(
        id="03.kv_bytes", number="3.1", target="kv_cache_bytes", points=2,
        task="return the bytes of KV cache that n_tokens cached tokens need, all layers, for MHA/GQA/MQA/MLA",
        reference=accounting.kv_cache_bytes,
        public_cases=_kv_bytes_public,
        hidden_cases=_kv_bytes_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-9, atol=1e-6),
        hint="per layer and token: 2·kv_heads·attn_head_dim for classic attention, kv_lora_rank + qk_rope_head_dim "
             "for MLA; then × n_layers × n_tokens × bits / 8",
    ),
    Exercise(
        id="03.latent_cache", number="3.2", target="latent_cache_step", points=2,
        task="return (c_kv, k_pe): the RMS-normalized latent and the RoPE'd shared key that MLA caches for x",
        reference=latent_cache_at,
        public_cases=_cache_step_public,
        hidden_cases=_cache_step_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-4, atol=1e-5),
        hint="split x @ wkv_a.T into the first d_c = len(kv_norm_weight) columns and the rest; RMSNorm (eps 1e-6) "
             "the first part; rotate the second with the RoPE table of positions start_pos.. (adjacent pairs)",
    ),
    Exercise(
        id="03.absorb", number="3.3", target="absorbed_attention", points=3,
        task="return the attention output o [B, S, H, d_v] computed in the latent space, from the latent cache",
        reference=mla.absorbed_attention,
        public_cases=_absorb_public,
        hidden_cases=_absorb_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-4, atol=1e-5),
        hint="wkv_b.view(H, d_nope + d_v, d_c): rows [:d_nope] are W_UK, the rest W_UV; scores = (q_nope W_UK · c + "
             "q_pe · k_pe) · scale; softmax over the T cached tokens; mix the latents, then apply W_UV",
    ),
]
