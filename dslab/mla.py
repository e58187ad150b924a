"""Multi-head Latent Attention (MLA), DeepSeek-V2 §2.1 / V3 §2.1.1, with the naive, recompute and absorbed decode paths.

Keys and values are rebuilt per head from one normalized latent c^KV_t (d_c = kv_lora_rank) plus one RoPE'd key
k^R_t (d_R = qk_rope_head_dim) shared by all heads. Caching that latent is what makes the cache small: d_c + d_R
elements per token and layer instead of MHA's 2·H·d_h (V2 Table 1). Weight absorption is what makes attending straight
from the latent cheap: W^UK moves into the query and W^UV after the softmax-weighted sum, so no per-head key or value
is ever formed (V2 §2.1.2). The three decode paths of ``MLA`` (``attn_impl``) separate the two ideas: "absorb" caches
the latent and attends in latent space (the official default); "recompute" caches the same latent but up-projects all
of it to per-head keys and values at every step (same memory, much more work); "naive" caches the expanded per-head
keys and values instead (the official naive mode: more memory than MHA). Parameter names follow ``MLA`` in
DeepSeek-V3's ``inference/model.py``: ``wq`` (or ``wq_a`` → ``q_norm`` → ``wq_b``), ``wkv_a`` = [W^DKV; W^KR],
``kv_norm``, ``wkv_b`` = [W^UK; W^UV] per head, ``wo``. Shapes: B batch, S new tokens, T cached tokens, H heads,
c = d_c, r = d_R, d = per-head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate
from dslab.accounting import ATTN_IMPLS, kv_elements_per_token
from dslab.attention import causal_mask, check_forward
from dslab.configs import ModelArgs
from dslab.nn import RMSNorm, apply_rotary_emb, precompute_freqs_cis, yarn_mscale

CACHE_LAYOUTS = ("bhtd", "bthd")


def softmax_scale(args: ModelArgs) -> float:
    """1/sqrt(qk_nope_head_dim + qk_rope_head_dim) (V3 eq. 10), × mscale² while YaRN is on (max_seq_len >
    original_seq_len), as the official code does: 192^-0.5 = 0.072169 for V3, 0.135234 with V3's YaRN (V3 §4.3)."""
    scale = (args.qk_nope_head_dim + args.qk_rope_head_dim) ** -0.5
    if args.max_seq_len > args.original_seq_len:
        scale *= yarn_mscale(args.rope_factor, args.mscale) ** 2
    return scale


def cache_elements_per_layer(args: ModelArgs, attn_impl: str = "absorb") -> int:
    """Numbers one MLA layer caches per token: the latent, d_c + d_R, for "absorb" and "recompute" (V2 Table 1);
    H·(d_nope + d_R + d_v) for "naive", which caches expanded per-head keys and values (V3 eqs. 4-5).

    The latent count is ``dslab.accounting.kv_elements_per_token`` per layer (the course's one KV formula). The naive
    cache is a choice of the official naive mode, not a consequence of skipping absorption ("recompute" skips it and
    still caches only the latent); it is larger than MHA's with the same heads, since every head also stores the
    RoPE key. V3: 576 vs 40,960 (1.4%).
    """
    if args.attn != "mla":
        raise ValueError(f"args.attn must be 'mla', got {args.attn!r} (classic attention: dslab.accounting)")
    validate.choice("attn_impl", attn_impl, ATTN_IMPLS)
    if attn_impl != "naive":
        return kv_elements_per_token(args) // args.n_layers
    return args.n_heads * (args.qk_nope_head_dim + args.qk_rope_head_dim + args.v_head_dim)


def latent_cache_step(x: torch.Tensor, wkv_a: torch.Tensor | nn.Module, kv_norm_weight: torch.Tensor,
                      freqs_cis: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """What MLA caches for new tokens: c^KV = kv_norm(W^DKV h) (V3 eq. 1) and k^R = RoPE(W^KR h) (eq. 3).

    x [B, S, dim]; wkv_a: the stacked weight [W^DKV; W^KR] of shape [c + r, dim], or the projection module that
    holds it (``MLA.wkv_a``: an nn.Linear, or e.g. ``dslab.fp8.FP8Linear`` in FP8 training), which is then called;
    kv_norm_weight [c], the RMSNorm that follows the latent (V2 §3.1.2); freqs_cis [S, r/2] (complex) for the
    tokens' positions. Returns (c_kv [B, S, c], k_pe [B, S, r]); k_pe is one head, shared by all query heads, and is
    cached after RoPE.
    """
    rope_dim = 2 * freqs_cis.shape[-1]
    kv = wkv_a(x) if isinstance(wkv_a, nn.Module) else F.linear(x, wkv_a)
    kv, k_pe = kv.split([kv.shape[-1] - rope_dim, rope_dim], dim=-1)
    c_kv = F.rms_norm(kv, (kv.shape[-1],), kv_norm_weight, eps)
    return c_kv, apply_rotary_emb(k_pe.unsqueeze(2), freqs_cis).squeeze(2)


def _split_wkv_b(wkv_b: torch.Tensor, n_heads: int, qk_nope_head_dim: int,
                 v_head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """wkv_b [H·(d_nope + d_v), c] -> (W^UK [H, d_nope, c], W^UV [H, d_v, c]): per head, key rows then value rows."""
    if wkv_b.shape[0] != n_heads * (qk_nope_head_dim + v_head_dim):
        raise ValueError(f"wkv_b must be [{n_heads}·({qk_nope_head_dim} + {v_head_dim}), c], got {tuple(wkv_b.shape)}")
    return wkv_b.view(n_heads, qk_nope_head_dim + v_head_dim, -1).split([qk_nope_head_dim, v_head_dim], dim=1)


def expand_latent(c_kv: torch.Tensor, wkv_b: torch.Tensor | nn.Module, n_heads: int, qk_nope_head_dim: int,
                  v_head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive path: k^C = W^UK c^KV (V3 eq. 2) and v^C = W^UV c^KV (eq. 5) for every head.

    c_kv [B, T, c]; wkv_b [H·(d_nope + d_v), c], or a projection module holding it that replaced the nn.Linear (e.g.
    ``dslab.fp8.FP8Linear``), which is then called. Returns (k_nope [B, T, H, d_nope], v [B, T, H, d_v]).
    """
    if isinstance(wkv_b, nn.Module):
        kv = wkv_b(c_kv).unflatten(-1, (n_heads, -1))
        if kv.shape[-1] != qk_nope_head_dim + v_head_dim:
            raise ValueError(f"wkv_b must output {n_heads}·({qk_nope_head_dim} + {v_head_dim}) features, got "
                             f"{wkv_b(c_kv).shape[-1]}")
        return kv.split([qk_nope_head_dim, v_head_dim], dim=-1)
    w_uk, w_uv = _split_wkv_b(wkv_b, n_heads, qk_nope_head_dim, v_head_dim)
    return torch.einsum("btc,hdc->bthd", c_kv, w_uk), torch.einsum("btc,hdc->bthd", c_kv, w_uv)


def absorb_query(q_nope: torch.Tensor, wkv_b: torch.Tensor, n_heads: int, qk_nope_head_dim: int,
                 v_head_dim: int) -> torch.Tensor:
    """Fold W^UK into the query: q^Cᵀ(W^UK c) = (W^UKᵀ q^C)ᵀ c, so keys never leave the latent (V2 §2.1.2).

    q_nope [B, S, H, d_nope]; wkv_b [H·(d_nope + d_v), c]. Returns [B, S, H, c].
    """
    w_uk, _ = _split_wkv_b(wkv_b, n_heads, qk_nope_head_dim, v_head_dim)
    return torch.einsum("bshd,hdc->bshc", q_nope, w_uk)


def absorbed_scores(q_absorbed: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, pe_cache: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """Attention logits of V3 eq. 10 straight from the cache: (q'·c^KV + q^R·k^R)·scale.

    q_absorbed [B, S, H, c]; q_pe [B, S, H, r]; kv_cache [B, T, c]; pe_cache [B, T, r]. Returns [B, S, H, T].
    """
    return (torch.einsum("bshc,btc->bsht", q_absorbed, kv_cache)
            + torch.einsum("bshr,btr->bsht", q_pe, pe_cache)) * scale


def absorbed_output(probs: torch.Tensor, kv_cache: torch.Tensor, wkv_b: torch.Tensor, n_heads: int,
                    qk_nope_head_dim: int, v_head_dim: int) -> torch.Tensor:
    """Σ_t p_t·W^UV c_t = W^UV Σ_t p_t·c_t: mix latents first, then apply W^UV once per head (V3 eqs. 5, 10).

    probs [B, S, H, T]; kv_cache [B, T, c]; wkv_b [H·(d_nope + d_v), c]. Returns o [B, S, H, d_v].
    """
    _, w_uv = _split_wkv_b(wkv_b, n_heads, qk_nope_head_dim, v_head_dim)
    return torch.einsum("bshc,hdc->bshd", torch.einsum("bsht,btc->bshc", probs, kv_cache), w_uv)


def absorbed_attention(q_nope: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, pe_cache: torch.Tensor,
                       wkv_b: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MLA attention that never leaves the latent space (V2 §2.1.2, the official ``attn_impl="absorb"``).

    q_nope [B, S, H, d_nope]; q_pe [B, S, H, r] (RoPE applied); kv_cache [B, T, c]; pe_cache [B, T, r]; wkv_b
    [H·(d_nope + d_v), c]; mask: additive [S, T] or None (every query sees all T). Returns o [B, S, H, d_v], the same
    as expanding k = [W^UK c; k^R] and v = W^UV c per head (V3 eqs. 4, 5, 10) with fp32 softmax.
    """
    n_heads, nope = q_nope.shape[2], q_nope.shape[3]
    if wkv_b.shape[0] % n_heads or wkv_b.shape[0] // n_heads <= nope:
        raise ValueError(f"wkv_b [{wkv_b.shape[0]}, c] must hold H = {n_heads} heads of d_nope = {nope} + d_v rows")
    heads = (n_heads, nope, wkv_b.shape[0] // n_heads - nope)
    scores = absorbed_scores(absorb_query(q_nope, wkv_b, *heads), q_pe, kv_cache, pe_cache, scale)
    if mask is not None:
        scores = scores + mask.unsqueeze(1)
    probs = scores.softmax(dim=-1, dtype=torch.float32).type_as(q_nope)
    return absorbed_output(probs, kv_cache, wkv_b, *heads)


class MLA(nn.Module):
    """Multi-head Latent Attention with a preallocated cache; forward(x [B, S, dim], start_pos) -> [B, S, dim].

    attn_impl "absorb" (the official default) caches c^KV [B, T, c] and k^R [B, T, r] and never expands keys or
    values; "recompute" caches the same latent and re-expands all of it per head at every step (no absorption);
    "naive" expands only the new tokens (V3 eqs. 2, 4, 5) and caches k [.., H, d_nope + r] and v [.., H, d_v]. All
    three compute the same function. cache_layout picks the naive cache: "bhtd" (head-major [B, H, T, D], default: each
    head's keys are one matrix) or "bthd" (the official [B, T, H, D]; its einsum copies the cache every step).
    ``softmax_scale`` is ``softmax_scale(args)``; overwrite the attribute to experiment.
    """

    def __init__(self, args: ModelArgs, max_batch_size: int = 8, attn_impl: str = "absorb",
                 cache_layout: str = "bhtd"):
        super().__init__()
        if not isinstance(args, ModelArgs) or args.attn != "mla":  # ModelArgs checked the MLA widths already
            raise ValueError(f"args must be a ModelArgs with attn='mla', got {getattr(args, 'attn', args)!r}")
        validate.choice("attn_impl", attn_impl, ATTN_IMPLS)
        validate.choice("cache_layout", cache_layout, CACHE_LAYOUTS)
        self.attn_impl, self.cache_layout = attn_impl, cache_layout
        self.dim, self.n_heads = args.dim, args.n_heads
        self.q_lora_rank, self.kv_lora_rank = args.q_lora_rank, args.kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim = args.qk_nope_head_dim, args.qk_rope_head_dim
        self.qk_head_dim = args.qk_nope_head_dim + args.qk_rope_head_dim
        self.v_head_dim = args.v_head_dim
        self.max_batch_size, self.max_seq_len = validate.integer("max_batch_size", max_batch_size, 1), args.max_seq_len
        if self.q_lora_rank == 0:  # V2-Lite: full-rank queries
            self.wq = nn.Linear(self.dim, self.n_heads * self.qk_head_dim, bias=False)
        else:  # V3 eqs. 6-7: c^Q = W^DQ h, normalized, then up-projected
            self.wq_a = nn.Linear(self.dim, self.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(self.q_lora_rank)
            self.wq_b = nn.Linear(self.q_lora_rank, self.n_heads * self.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(self.dim, self.kv_lora_rank + self.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(self.kv_lora_rank)
        self.wkv_b = nn.Linear(self.kv_lora_rank, self.n_heads * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        self.wo = nn.Linear(self.n_heads * self.v_head_dim, self.dim, bias=False)
        self.softmax_scale = softmax_scale(args)
        self.register_buffer("freqs_cis", precompute_freqs_cis(args), persistent=False)
        b, t, h = max_batch_size, args.max_seq_len, self.n_heads
        if attn_impl != "naive":  # absorb and recompute cache the latent
            caches = {"kv_cache": (b, t, self.kv_lora_rank), "pe_cache": (b, t, self.qk_rope_head_dim)}
        elif cache_layout == "bhtd":
            caches = {"k_cache": (b, h, t, self.qk_head_dim), "v_cache": (b, h, t, self.v_head_dim)}
        else:
            caches = {"k_cache": (b, t, h, self.qk_head_dim), "v_cache": (b, t, h, self.v_head_dim)}
        for name, shape in caches.items():  # not persistent: state_dicts of both paths are interchangeable
            self.register_buffer(name, torch.zeros(shape), persistent=False)
        self._cache_names = tuple(caches)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """x [B, S, dim] holding positions start_pos..start_pos+S-1 -> u [B, S, dim] (V3 eq. 11)."""
        end_pos = check_forward(x, self.dim, start_pos, self.max_batch_size, self.max_seq_len, self.training)
        bsz, seqlen, _ = x.shape
        freqs_cis = self.freqs_cis[start_pos:end_pos]
        q = self.wq(x) if self.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x)))
        q_nope, q_pe = q.view(bsz, seqlen, self.n_heads, self.qk_head_dim).split(
            [self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        q_pe = apply_rotary_emb(q_pe, freqs_cis)  # V3 eq. 8
        c_kv, k_pe = latent_cache_step(x, self.wkv_a, self.kv_norm.weight, freqs_cis, self.kv_norm.eps)
        if self.training:
            return self.wo(self._uncached(q_nope, q_pe, c_kv, k_pe).flatten(2))
        mask = causal_mask(seqlen, start_pos, x.device)
        if self.attn_impl == "naive":
            o = self._naive(q_nope, q_pe, c_kv, k_pe, start_pos, end_pos, mask)
        elif self.attn_impl == "recompute":
            o = self._recompute(q_nope, q_pe, c_kv, k_pe, start_pos, end_pos, mask)
        else:
            o = self._absorb(q_nope, q_pe, c_kv, k_pe, start_pos, end_pos, mask)
        return self.wo(o.flatten(2))

    def _uncached(self, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor,
                  k_pe: torch.Tensor) -> torch.Tensor:
        """Training path: the naive expansion over x's own tokens with a fused causal kernel -> o [B, S, H, d_v].

        Absorption saves memory traffic when decoding from a cache; in training every key is used by many queries,
        so expanding K and V once is the cheaper order (see ``dslab.bench.mla.measure_prefill``).
        """
        # A plain nn.Linear's weight goes through the einsum; a replacement module (FP8 training) is called.
        wkv_b = self.wkv_b.weight if type(self.wkv_b) is nn.Linear else self.wkv_b
        k_nope, v = expand_latent(c_kv, wkv_b, self.n_heads, self.qk_nope_head_dim, self.v_head_dim)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, self.n_heads, -1)], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           scale=self.softmax_scale)
        return o.transpose(1, 2)

    def _naive(self, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor, start_pos: int,
               end_pos: int, mask: torch.Tensor | None) -> torch.Tensor:
        """q_nope [B, S, H, d_nope], q_pe [B, S, H, r], c_kv [B, S, c], k_pe [B, S, r] -> o [B, S, H, d_v]."""
        bsz = q_nope.shape[0]
        k_nope, v = expand_latent(c_kv, self.wkv_b.weight, self.n_heads, self.qk_nope_head_dim, self.v_head_dim)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, self.n_heads, -1)], dim=-1)  # V3 eq. 4
        q = torch.cat([q_nope, q_pe], dim=-1)  # V3 eq. 9
        if self.cache_layout == "bthd":
            self.k_cache[:bsz, start_pos:end_pos] = k
            self.v_cache[:bsz, start_pos:end_pos] = v
            scores = torch.einsum("bshd,bthd->bsht", q, self.k_cache[:bsz, :end_pos]) * self.softmax_scale
            if mask is not None:
                scores = scores + mask.unsqueeze(1)
            probs = scores.softmax(dim=-1, dtype=torch.float32).type_as(q)
            return torch.einsum("bsht,bthd->bshd", probs, self.v_cache[:bsz, :end_pos])
        self.k_cache[:bsz, :, start_pos:end_pos] = k.transpose(1, 2)
        self.v_cache[:bsz, :, start_pos:end_pos] = v.transpose(1, 2)
        scores = torch.einsum("bshd,bhtd->bhst", q, self.k_cache[:bsz, :, :end_pos]) * self.softmax_scale
        if mask is not None:
            scores = scores + mask
        probs = scores.softmax(dim=-1, dtype=torch.float32).type_as(q)
        return torch.einsum("bhst,bhtd->bshd", probs, self.v_cache[:bsz, :, :end_pos])

    def _absorb(self, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor,
                start_pos: int, end_pos: int, mask: torch.Tensor | None) -> torch.Tensor:
        """As ``_naive``, but attends in the latent space: the cache is c_kv and k_pe only (V2 §2.1.2)."""
        bsz = q_nope.shape[0]
        self.kv_cache[:bsz, start_pos:end_pos] = c_kv
        self.pe_cache[:bsz, start_pos:end_pos] = k_pe
        return absorbed_attention(q_nope, q_pe, self.kv_cache[:bsz, :end_pos], self.pe_cache[:bsz, :end_pos],
                                  self.wkv_b.weight, self.softmax_scale, mask)

    def _recompute(self, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor,
                   start_pos: int, end_pos: int, mask: torch.Tensor | None) -> torch.Tensor:
        """The latent cache without absorption: store c_kv and k_pe, then up-project every cached latent to per-head
        keys and values (V3 eqs. 2, 4, 5) and attend as the naive path does -> o [B, S, H, d_v]."""
        bsz = q_nope.shape[0]
        self.kv_cache[:bsz, start_pos:end_pos] = c_kv
        self.pe_cache[:bsz, start_pos:end_pos] = k_pe
        k_nope, v = expand_latent(self.kv_cache[:bsz, :end_pos], self.wkv_b.weight, self.n_heads,
                                  self.qk_nope_head_dim, self.v_head_dim)
        pe = self.pe_cache[:bsz, :end_pos].unsqueeze(2).expand(-1, -1, self.n_heads, -1)
        scores = (torch.einsum("bshd,bthd->bsht", q_nope, k_nope)
                  + torch.einsum("bshr,bthr->bsht", q_pe, pe)) * self.softmax_scale
        if mask is not None:
            scores = scores + mask.unsqueeze(1)
        probs = scores.softmax(dim=-1, dtype=torch.float32).type_as(q_nope)
        return torch.einsum("bsht,bthd->bshd", probs, v)

    def cache_bytes(self) -> int:
        """Bytes held by this path's preallocated cache tensors (absorb: max_batch·max_seq_len·(c + r)·elem size)."""
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self._cache_names)
