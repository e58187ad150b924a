"""Exercises of lab 03 "MLA", in the notebook's order: 3.1 predict the KV-cache bytes (then measured on real modules),
3.2 RoPE from its definition (the decoupled key shared by all heads), 3.3 the latent cache step, 3.4 repair a
softmax scale, 3.5 attention straight from the latent (weight absorption).

Hidden cases vary the architecture, the shapes and the positions, so an answer that only fits the public cases (or
hard-codes one model's numbers) fails them. Tensor inputs are seeded from the grader's rng. Each common wrong answer
is a ``Mistake`` whose hint feedback shows.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from dslab import accounting, mla
from dslab.configs import ModelArgs, load
from dslab.course.exercises import Case, Exercise, Mistake, compare_close
from dslab.nn import apply_rotary_emb, rotary_freqs, yarn_mscale


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


def _kv_with(args: ModelArgs, n_tokens: int, bits: float, rope_key: bool = True, kv_heads: bool = True,
             per_bit: float = 1 / 8, layers: bool = True, expanded: bool = False) -> float:
    """KV-cache bytes with one piece wrong: the wrong answers of 3.1."""
    if args.attn == "mla":
        per_layer = (mla.cache_elements_per_layer(args, "naive") if expanded
                     else args.kv_lora_rank + (args.qk_rope_head_dim if rope_key else 0))
    else:
        per_layer = 2 * (args.kv_heads if kv_heads else args.n_heads) * args.attn_head_dim
    return per_layer * (args.n_layers if layers else 1) * n_tokens * bits * per_bit


KV_MISTAKES = (
    Mistake("RoPE key left out", lambda a, n, b: _kv_with(a, n, b, rope_key=False),
            "MLA caches two things per token and layer: the latent (kv_lora_rank) and the shared RoPE key "
            "(qk_rope_head_dim)"),
    Mistake("KV heads taken as query heads", lambda a, n, b: _kv_with(a, n, b, kv_heads=False),
            "GQA and MQA cache keys and values only for their KV heads: args.kv_heads, not args.n_heads"),
    Mistake("bits, not bytes", lambda a, n, b: _kv_with(a, n, b, per_bit=1),
            "bits / 8 gives bytes"),
    Mistake("one layer only", lambda a, n, b: _kv_with(a, n, b, layers=False),
            "every one of the args.n_layers layers keeps its own cache"),
    Mistake("expanded per-head keys and values", lambda a, n, b: _kv_with(a, n, b, expanded=True),
            "MLA's cache holds the latent, not per-head keys and values: kv_lora_rank + qk_rope_head_dim per layer"),
)


# ------------------------------------------------------------------------------------------------- 3.2 RoPE
def rope_reference(x: torch.Tensor, start_pos: int, base: float = 10000.0) -> torch.Tensor:
    """The course's RoPE (adjacent pairs, official layout) for x [B, S, d] (one shared head) or [B, S, H, d]."""
    freqs = rotary_freqs(x.shape[-1], start_pos + x.shape[1], base)[start_pos:]
    heads = x if x.dim() == 4 else x.unsqueeze(2)
    out = apply_rotary_emb(heads, freqs)
    return out if x.dim() == 4 else out.squeeze(2)


def _rope_with(x: torch.Tensor, start_pos: int, base: float = 10000.0, halves: bool = False, exponent: float = 2.0,
               from_zero: bool = False, sign: float = 1.0) -> torch.Tensor:
    """RoPE written out with one convention wrong: the wrong answers of 3.2 (the defaults are right)."""
    d, s = x.shape[-1], x.shape[1]
    theta = base ** (-exponent * torch.arange(d // 2, dtype=torch.float64) / d)
    pos = torch.arange(s, dtype=torch.float64) + (0 if from_zero else start_pos)
    angle = sign * torch.outer(pos, theta).view(s, *([1] * (x.dim() - 3)), d // 2)  # [S, (1,) d/2]
    cos, sin = angle.cos(), angle.sin()
    xd = x.double()
    if halves:  # HF's layout: channel j pairs with j + d/2
        a, b = xd[..., : d // 2], xd[..., d // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1).to(x.dtype)
    a, b = xd[..., 0::2], xd[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2).to(x.dtype)


ROPE_MISTAKES = (
    Mistake("halves paired instead of neighbours", lambda x, p, b=10000.0: _rope_with(x, p, b, halves=True),
            "DeepSeek's layout rotates adjacent channels (2j, 2j+1) together; channel j with j + d/2 is HF's layout"),
    Mistake("θ_j = base^(-j/d)", lambda x, p, b=10000.0: _rope_with(x, p, b, exponent=1.0),
            "pair j turns at θ_j = base^(-2j/d): the exponent counts channels, two per pair"),
    Mistake("positions from 0", lambda x, p, b=10000.0: _rope_with(x, p, b, from_zero=True),
            "token s of x sits at position start_pos + s; a decode step does not start at 0"),
    Mistake("rotated the other way", lambda x, p, b=10000.0: _rope_with(x, p, b, sign=-1.0),
            "rotate by +m·θ_j: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos), multiplication by e^{i m θ_j}"),
)


def _rope_public() -> list[Case]:
    gen = torch.Generator().manual_seed(2)
    return [Case((torch.randn(1, 3, 4, generator=gen), 0), "shared key [1, 3, 4] at positions 0..2"),
            Case((torch.randn(2, 1, 8, generator=gen), 17), "shared key [2, 1, 8], one token at position 17"),
            Case((torch.randn(1, 2, 3, 8, generator=gen), 5), "3 query heads [1, 2, 3, 8] at positions 5, 6"),
            Case((torch.randn(1, 4, 16, generator=gen), 2, 500.0), "d 16 at positions 2..5, base 500")]


def _rope_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i, heads in enumerate([0, 0, 2, 4, 0]):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        shape = [rng.randint(1, 3), rng.randint(1, 6)] + ([heads] if heads else []) + [rng.choice([4, 8, 16, 32])]
        args = (torch.randn(*shape, generator=gen), rng.choice([0, rng.randint(1, 600)]))
        if i == 4:
            args += (rng.choice([500.0, 10000.0, 1e6]),)
        kind = "query heads" if heads else "shared key"
        cases.append(Case(args, f"random #{i}: {kind}" + (", random base" if i == 4 else "")))
    return cases


# ------------------------------------------------------------------------------------------ 3.3 latent cache step
def latent_cache_at(x: torch.Tensor, wkv_a: torch.Tensor, kv_norm_weight: torch.Tensor,
                    start_pos: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``mla.latent_cache_step`` for tokens at positions start_pos.. with plain RoPE (base 10000, no YaRN): the
    exercise's signature, positions in place of the complex RoPE table so that every input is plain data."""
    freqs_cis = rotary_freqs(wkv_a.shape[0] - kv_norm_weight.shape[0], start_pos + x.shape[1])[start_pos:]
    return mla.latent_cache_step(x, wkv_a, kv_norm_weight, freqs_cis)


def _cache_step_with(x, wkv_a, w, start_pos, norm: bool = True, rope: str = "right"):
    """The latent cache step with one piece wrong: the wrong answers of 3.3."""
    d_c = w.shape[0]
    kv, k_pe = F.linear(x, wkv_a).split([d_c, wkv_a.shape[0] - d_c], dim=-1)
    c_kv = F.rms_norm(kv, (d_c,), w, 1e-6) if norm else kv * w
    rotated = {"right": lambda: _rope_with(k_pe, start_pos), "none": lambda: k_pe,
               "from zero": lambda: _rope_with(k_pe, start_pos, from_zero=True),
               "halves": lambda: _rope_with(k_pe, start_pos, halves=True)}[rope]()
    return c_kv, rotated


CACHE_MISTAKES = (
    Mistake("RoPE key cached before rotation", lambda *a: _cache_step_with(*a, rope="none"),
            "k^R is cached after RoPE (V3 eq. 3): rotate it at the token's own position before storing it"),
    Mistake("latent not normalized", lambda *a: _cache_step_with(*a, norm=False),
            "the cached latent is kv_norm(W^DKV h): an RMSNorm (eps 1e-6) times kv_norm_weight"),
    Mistake("positions from 0", lambda *a: _cache_step_with(*a, rope="from zero"),
            "the new tokens sit at positions start_pos, start_pos + 1, ..."),
    Mistake("halves paired instead of neighbours", lambda *a: _cache_step_with(*a, rope="halves"),
            "RoPE rotates adjacent channel pairs (2j, 2j+1), as in Exercise 3.2"),
)


def _cache_step_case(gen: torch.Generator, batch: int, seqlen: int, dim: int, d_c: int, d_r: int,
                     start_pos: int) -> tuple:
    x = torch.randn(batch, seqlen, dim, generator=gen)
    wkv_a = torch.randn(d_c + d_r, dim, generator=gen) / dim**0.5
    kv_norm_weight = 0.5 + torch.rand(d_c, generator=gen)
    return x, wkv_a, kv_norm_weight, start_pos


def _cache_step_public() -> list[Case]:
    gen = torch.Generator().manual_seed(3)
    return [Case(_cache_step_case(gen, 1, 4, 16, 8, 4, 0), "prefill of 4 tokens, d_c 8, d_R 4"),
            Case(_cache_step_case(gen, 2, 3, 24, 12, 8, 30), "3 tokens at positions 30..32, d_R 8"),
            Case(_cache_step_case(gen, 2, 1, 16, 8, 4, 7), "decode 1 token at position 7")]


def _cache_step_hidden(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(5):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        shape = (rng.randint(1, 3), rng.randint(1, 6), rng.choice([8, 16, 32]), rng.choice([4, 8, 16, 24]),
                 rng.choice([2, 4, 8, 16]), rng.choice([0, rng.randint(1, 500), rng.randint(1, 500)]))
        cases.append(Case(_cache_step_case(gen, *shape), f"random step #{i} (batch, tokens, width, d_c, d_R and "
                                                          f"start_pos drawn at random)"))
    return cases


# -------------------------------------------------------------------------------------- 3.4 softmax scale, debug
def softmax_scale_draft(args: ModelArgs) -> float:
    """The notebook's first attempt at MLA's softmax scale; two things are wrong with it."""
    scale = args.qk_nope_head_dim ** -0.5
    if args.max_seq_len > args.original_seq_len:  # YaRN stretches the context
        scale = scale * yarn_mscale(args.rope_factor, args.mscale)
    return scale


def _scale_with(args: ModelArgs, width: str = "qk", power: int = 2, yarn: str = "when on") -> float:
    """MLA's softmax scale with one piece wrong: the wrong answers of 3.4."""
    dims = args.qk_nope_head_dim + (args.qk_rope_head_dim if width == "qk" else 0)
    on = {"when on": args.max_seq_len > args.original_seq_len, "always": True, "never": False}[yarn]
    return dims ** -0.5 * (yarn_mscale(args.rope_factor, args.mscale) ** power if on else 1.0)


SCALE_MISTAKES = (
    Mistake("d_nope only", lambda a: _scale_with(a, width="nope"),
            "a query head meets a key of d_h + d^R_h channels (V3 eq. 10: 1/sqrt(d_h + d^R_h)), not d_h"),
    Mistake("mscale not squared", lambda a: _scale_with(a, power=1),
            "YaRN's temperature scales both q and k, so the logits get mscale squared"),
    Mistake("YaRN always", lambda a: _scale_with(a, yarn="always"),
            "the mscale correction applies only when YaRN is on: max_seq_len > original_seq_len"),
    Mistake("YaRN never", lambda a: _scale_with(a, yarn="never"),
            "with max_seq_len > original_seq_len the official code multiplies the scale by mscale squared"),
    Mistake("the draft unchanged", softmax_scale_draft,
            "the draft has two bugs: the width under the square root, and how the YaRN factor enters"),
)


def _random_yarn(rng: random.Random, on: bool) -> ModelArgs:
    original = rng.choice([256, 1024, 4096])
    return ModelArgs(name="hidden", dim=256, n_heads=rng.choice([2, 4, 8]), n_layers=2, q_lora_rank=0,
                     kv_lora_rank=rng.choice([32, 64, 128]), qk_nope_head_dim=rng.choice([16, 32, 64, 128]),
                     qk_rope_head_dim=rng.choice([8, 16, 32, 64]), v_head_dim=rng.choice([16, 32, 64]),
                     original_seq_len=original, max_seq_len=original * (rng.choice([2, 4, 32]) if on else 1),
                     rope_factor=rng.choice([4.0, 8.0, 40.0]), mscale=rng.choice([0.707, 1.0]), n_routed_experts=0,
                     n_shared_experts=0, n_activated_experts=0, n_dense_layers=0)


def _scale_public() -> list[Case]:
    return [Case((load("deepseek-v3-671b"),), "deepseek-v3-671b (YaRN on: 16384 > 4096)"),
            Case((load("tiny-mla"),), "tiny-mla (YaRN off)"),
            Case((load("deepseek-v2-lite-16b"),), "deepseek-v2-lite-16b (YaRN on, mscale 0.707)")]


def _scale_hidden(rng: random.Random) -> list[Case]:
    return [Case((_random_yarn(rng, on),), f"random MLA #{i}, YaRN {'on' if on else 'off'}")
            for i, on in enumerate([True, False, True, True, False])]


# --------------------------------------------------------------------------------------------- 3.5 absorption
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
        shape = (rng.randint(1, 2), rng.randint(1, 3), rng.randint(2, 24), rng.choice([2, 3, 4, 8]),
                 rng.choice([4, 8, 16]), rng.choice([2, 4, 8]), rng.choice([4, 6, 8, 16]), rng.choice([8, 12, 32]))
        cases.append(Case(_absorb_case(gen, *shape), f"random #{i} (B, S, T, H, d_nope, d_R, d_v, d_c drawn at "
                                                      f"random)"))
    return cases


def _absorb_values_first(q_nope, q_pe, kv_cache, pe_cache, wkv_b, scale):
    """wkv_b read per head as [W^UV; W^UK] instead of [W^UK; W^UV]."""
    h, nope = q_nope.shape[2], q_nope.shape[3]
    w = wkv_b.view(h, -1, wkv_b.shape[1])
    d_v = w.shape[1] - nope
    swapped = torch.cat([w[:, d_v:], w[:, :d_v]], 1).flatten(0, 1)  # the last d_nope rows become the keys
    return mla.absorbed_attention(q_nope, q_pe, kv_cache, pe_cache, swapped, scale)


def _absorb_softmax_over_heads(q_nope, q_pe, kv_cache, pe_cache, wkv_b, scale):
    h, nope = q_nope.shape[2], q_nope.shape[3]
    w = wkv_b.view(h, -1, wkv_b.shape[1])
    w_uk, w_uv = w[:, :nope], w[:, nope:]
    scores = (torch.einsum("bshc,btc->bsht", torch.einsum("bshd,hdc->bshc", q_nope, w_uk), kv_cache)
              + torch.einsum("bshr,btr->bsht", q_pe, pe_cache)) * scale
    return torch.einsum("bshc,hdc->bshd", torch.einsum("bsht,btc->bshc", scores.softmax(2), kv_cache), w_uv)


ABSORB_MISTAKES = (
    Mistake("W^UV rows taken as W^UK", _absorb_values_first,
            "per head, wkv_b holds the d_nope rows of W^UK first, then the d_v rows of W^UV"),
    Mistake("RoPE part of the score left out",
            lambda qn, qp, kv, pe, w, s: mla.absorbed_attention(qn, torch.zeros_like(qp), kv, pe, w, s),
            "the score is q^C·k^C + q^R·k^R: add q_pe · pe_cache to the latent part"),
    Mistake("scale not applied", lambda qn, qp, kv, pe, w, s: mla.absorbed_attention(qn, qp, kv, pe, w, 1.0),
            "multiply the scores by scale before the softmax"),
    Mistake("softmax over the heads", _absorb_softmax_over_heads,
            "each head normalizes its scores over the T cached tokens (the last axis), not over the heads"),
)


EXERCISES = [
    Exercise(
        id="03.kv_bytes", number="3.1", target="kv_cache_bytes", points=2, kind="predict",
        task="return the bytes of KV cache that n_tokens cached tokens need, all layers, for MHA/GQA/MQA/MLA",
        reference=accounting.kv_cache_bytes,
        public_cases=_kv_bytes_public,
        hidden_cases=_kv_bytes_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-9, atol=1e-6),
        hint="per token and layer, count what each attention kind stores; then layers, tokens and bits",
        mistakes=KV_MISTAKES,
        giveaways=("kv_lora_rank + args.qk_rope_head_dim", "d_c + d^R_h", r"\tfrac{9}{2} d_h", "2.25 groups",
                   "512 + 64"),
        forbidden=("dslab.accounting.kv_cache_bytes", "dslab.accounting.kv_bytes_per_token",
                   "dslab.accounting.kv_elements_per_token", "dslab.mla.cache_elements_per_layer"),
    ),
    Exercise(
        id="03.rope", number="3.2", target="rope", points=2, kind="implement",
        task="rotate each adjacent channel pair (2j, 2j+1) of x at position m by m·θ_j, θ_j = base^(-2j/d)",
        reference=rope_reference,
        public_cases=_rope_public,
        hidden_cases=_rope_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-4, atol=3e-4),
        hint="pair (x[2j], x[2j+1]) is the complex number x[2j] + i·x[2j+1]; multiply it by e^{i·m·θ_j}",
        mistakes=ROPE_MISTAKES,
        giveaways=("torch.view_as_complex", "torch.polar", "torch.outer(torch.arange(start_pos, start_pos + seqlen"),
        forbidden=("dslab.nn.apply_rotary_emb", "dslab.nn.rotary_freqs", "dslab.nn.precompute_freqs_cis",
                   "dslab.mla.latent_cache_step", "dslab.labs.lab03_mla.exercises.rope_reference"),
    ),
    Exercise(
        id="03.latent_cache", number="3.3", target="latent_cache_step", points=2, kind="implement",
        task="return (c_kv, k_pe): the RMS-normalized latent and the RoPE'd shared key that MLA caches for x",
        reference=latent_cache_at,
        public_cases=_cache_step_public,
        hidden_cases=_cache_step_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-4, atol=3e-4),
        hint="wkv_a's first d_c = len(kv_norm_weight) outputs are the latent, the rest the RoPE key (V3 eqs. 1, 3)",
        mistakes=CACHE_MISTAKES,
        giveaways=("split([d_c, wkv_a.shape[0] - d_c]", "torch.rsqrt(kv.pow(2).mean(-1, keepdim=True) + 1e-6)",
                   "rope(k_pe, start_pos)"),
        forbidden=("dslab.mla.latent_cache_step", "dslab.labs.lab03_mla.exercises.latent_cache_at"),
    ),
    Exercise(
        id="03.softmax_scale", number="3.4", target="softmax_scale", points=2, kind="debug",
        task="repair softmax_scale_draft: MLA's attention scale, with YaRN's correction when YaRN is on",
        reference=mla.softmax_scale,
        public_cases=_scale_public,
        hidden_cases=_scale_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-6, atol=0.0),
        hint="V3 eq. 10 divides by the square root of the query-key width; §4.3 gives YaRN's temperature",
        mistakes=SCALE_MISTAKES,
        giveaways=("qk_nope_head_dim + args.qk_rope_head_dim", "d_h + d^R_h", "yarn_mscale(args.rope_factor, "
                   "args.mscale) ** 2", "square of YaRN", "1/sqrt(192)"),
        forbidden=("dslab.mla.softmax_scale", "dslab.mla.MLA"),
    ),
    Exercise(
        id="03.absorb", number="3.5", target="absorbed_attention", points=3, kind="implement",
        task="return the attention output o [B, S, H, d_v] computed in the latent space, from the latent cache",
        reference=mla.absorbed_attention,
        public_cases=_absorb_public,
        hidden_cases=_absorb_hidden,
        compare=lambda e, g: compare_close(e, g, rtol=1e-4, atol=1e-5),
        hint="fold W^UK into the query and apply W^UV after the softmax-weighted sum of latents (V2 §2.1.2)",
        mistakes=ABSORB_MISTAKES,
        giveaways=("wkv_b.view(n_heads, -1", "bshd,hdc->bshc", "bsht,btc->bshc", "bshc,hdc->bshd"),
        forbidden=("dslab.mla.absorbed_attention", "dslab.mla.absorb_query", "dslab.mla.absorbed_scores",
                   "dslab.mla.absorbed_output", "dslab.mla.expand_latent", "dslab.mla.MLA"),
    ),
]
