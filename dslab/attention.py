"""Classic attention baselines for MLA: multi-head (MHA), grouped-query (GQA) and multi-query (MQA) attention.

One class covers all three: n_heads query heads share n_kv_heads key/value heads (MHA: n_kv = n_heads, GQA: n_kv
divides n_heads, MQA: n_kv = 1), so the KV cache holds 2·n_kv·head_dim elements per token and layer (V2 §2.1.1,
Table 1). RoPE uses the official adjacent-pair layout (``dslab.nn.apply_rotary_emb``). The cache is head-major
[B, n_kv, T, head_dim] so each head's keys are one contiguous matrix for the batched matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate
from dslab.configs import ModelArgs
from dslab.nn import apply_rotary_emb, rotary_freqs


def check_step(x: torch.Tensor, dim: int, start_pos: int, max_batch_size: int, max_seq_len: int) -> int:
    """Validate one (incremental) attention call on x [B, S, dim] at positions start_pos..start_pos+S-1; return end."""
    if x.dim() != 3 or x.shape[-1] != dim or x.shape[1] == 0:
        raise ValueError(f"x must be [batch, seqlen >= 1, {dim}], got shape {tuple(x.shape)}")
    if not 1 <= x.shape[0] <= max_batch_size:
        raise ValueError(f"batch size {x.shape[0]} exceeds the cache's max_batch_size {max_batch_size}")
    validate.integer("start_pos", start_pos, 0)
    end_pos = start_pos + x.shape[1]
    if end_pos > max_seq_len:
        raise ValueError(f"start_pos + seqlen = {end_pos} exceeds the cache's max_seq_len {max_seq_len}")
    return end_pos


def check_forward(x: torch.Tensor, dim: int, start_pos: int, max_batch_size: int, max_seq_len: int,
                  training: bool) -> int:
    """``check_step`` for a module's forward: training attends within x (start_pos 0, any batch, nothing cached);
    eval decodes from the preallocated cache, so the batch must fit it."""
    if not training:
        return check_step(x, dim, start_pos, max_batch_size, max_seq_len)
    end_pos = check_step(x, dim, start_pos, x.shape[0] or 1, max_seq_len)
    if start_pos != 0:
        raise ValueError(f"start_pos must be 0 in training mode (call .eval() to decode), got {start_pos}")
    return end_pos


def causal_mask(seqlen: int, start_pos: int = 0, device: torch.device | str | None = None) -> torch.Tensor | None:
    """Additive mask [seqlen, start_pos + seqlen]: query i (position start_pos + i) sees keys j <= start_pos + i.

    None for a single decoded token, which may see the whole cache. Unlike the official ``triu_(1)`` [S, S] mask it
    also serves a chunk prefilled after cached tokens (start_pos > 0).
    """
    if seqlen == 1:
        return None
    return torch.full((seqlen, start_pos + seqlen), float("-inf"), device=device).triu_(start_pos + 1)


class Attention(nn.Module):
    """MHA / GQA / MQA with RoPE and a preallocated KV cache, chosen by ``args.attn`` and ``args.kv_heads``.

    Query head h reads KV head h // (n_heads / n_kv_heads), as in Llama and DeepSeek LLM 67B. Parameters: ``wq``
    [dim → H·d_h], ``wk``/``wv`` [dim → n_kv·d_h], ``wo`` [H·d_h → dim]; scale 1/sqrt(d_h). forward(x [B, S, dim],
    start_pos) -> [B, S, dim], caching positions start_pos..start_pos+S-1.
    """

    def __init__(self, args: ModelArgs, max_batch_size: int = 8):
        super().__init__()
        if args.attn not in ("mha", "gqa", "mqa"):
            raise ValueError(f"Attention needs args.attn in ('mha', 'gqa', 'mqa'), got {args.attn!r} (MLA: dslab.mla)")
        self.dim, self.n_heads, self.n_kv_heads = args.dim, args.n_heads, args.kv_heads
        self.head_dim = args.attn_head_dim
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        self.max_batch_size, self.max_seq_len = validate.integer("max_batch_size", max_batch_size, 1), args.max_seq_len
        self.wq = nn.Linear(self.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(self.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(self.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, self.dim, bias=False)
        self.softmax_scale = self.head_dim ** -0.5
        self.register_buffer("freqs_cis", rotary_freqs(self.head_dim, args.max_seq_len, args.rope_theta),
                             persistent=False)
        cache = (max_batch_size, self.n_kv_heads, args.max_seq_len, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(cache), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache), persistent=False)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """x [B, S, dim] holding positions start_pos..start_pos+S-1 -> [B, S, dim]."""
        end_pos = check_forward(x, self.dim, start_pos, self.max_batch_size, self.max_seq_len, self.training)
        bsz, seqlen, _ = x.shape
        groups = self.n_heads // self.n_kv_heads
        freqs_cis = self.freqs_cis[start_pos:end_pos]
        q = apply_rotary_emb(self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim), freqs_cis)
        k = apply_rotary_emb(self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim), freqs_cis)
        v = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        if self.training:  # each KV head serves its group of query heads; a fused causal kernel does the rest
            k, v = (t.transpose(1, 2).repeat_interleave(groups, dim=1) for t in (k, v))
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True, scale=self.softmax_scale)
            return self.wo(o.transpose(1, 2).flatten(2))
        self.k_cache[:bsz, :, start_pos:end_pos] = k.transpose(1, 2)
        self.v_cache[:bsz, :, start_pos:end_pos] = v.transpose(1, 2)
        # the G = H / n_kv query heads of a group attend to one cached head: no repeat_interleave copy of the cache
        q = q.view(bsz, seqlen, self.n_kv_heads, groups, self.head_dim)
        scores = torch.einsum("bskgd,bktd->bkgst", q, self.k_cache[:bsz, :, :end_pos]) * self.softmax_scale
        mask = causal_mask(seqlen, start_pos, x.device)
        if mask is not None:
            scores = scores + mask
        probs = scores.softmax(dim=-1, dtype=torch.float32).type_as(x)
        out = torch.einsum("bkgst,bktd->bskgd", probs, self.v_cache[:bsz, :, :end_pos])
        return self.wo(out.flatten(2))

    def cache_bytes(self) -> int:
        """Bytes held by the preallocated K and V caches: 2·max_batch·max_seq_len·n_kv·head_dim·element size."""
        return sum(t.numel() * t.element_size() for t in (self.k_cache, self.v_cache))
