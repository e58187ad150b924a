"""Small shared layers: RMSNorm, the SwiGLU MLP and rotary position embeddings (RoPE), with YaRN.

Names follow DeepSeek-V3's ``inference/model.py`` (``w1``/``w2``/``w3``, ``precompute_freqs_cis``,
``apply_rotary_emb``) so the two can be read side by side. ``rotate_half``/``apply_rotary_emb_half``/``deinterleave``
are HF transformers' RoPE layout, kept only to show that it matches the official one after de-interleaving.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from dslab.configs import ModelArgs


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class RMSNorm(nn.Module):
    """Root-mean-square norm: ``x / rms(x) * weight``; eps 1e-6 as in DeepSeek-V3. Input [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = _positive_int("dim", dim)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm expects last dim {self.dim}, got input of shape {tuple(x.shape)}")
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)


class MLP(nn.Module):
    """SwiGLU feed-forward ``w2(silu(w1 x) * w3 x)``, used for dense layers, shared and routed experts.

    Args: dim (model width d), inter_dim (hidden width). Input [..., dim] -> [..., dim]. 3·dim·inter_dim parameters.
    """

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = nn.Linear(_positive_int("dim", dim), _positive_int("inter_dim", inter_dim), bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature sqrt(1/t) = 0.1·mscale·ln(factor) + 1 (V3 §4.3), 1.0 when factor <= 1.

    MLA multiplies its softmax scale by the square of it: V3 (factor 40, mscale 1.0) gives 1.36889² = 1.87385.
    """
    if not mscale > 0:
        raise ValueError(f"mscale must be > 0, got {mscale!r}")
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_ramp(dim: int, theta: float, original_seq_len: int, beta_fast: float = 32,
              beta_slow: float = 1) -> torch.Tensor:
    """Per channel pair j < dim/2: 0 where RoPE keeps its frequency, 1 where YaRN divides it by the factor.

    Pair j turns L/(2π·theta^(2j/dim)) times over the original context L. Pairs turning more than beta_fast times
    resolve local order and are kept; pairs turning fewer than beta_slow times never saw a full turn in training and
    are interpolated; the ones between are blended linearly. Returns float32 [dim // 2].
    """
    _positive_int("original_seq_len", original_seq_len)
    if not beta_fast > beta_slow > 0:
        raise ValueError(f"need beta_fast > beta_slow > 0, got beta_fast={beta_fast!r}, beta_slow={beta_slow!r}")

    def pair_index(rotations: float) -> float:  # j solving L / (2π·theta^(2j/dim)) = rotations
        return dim * math.log(original_seq_len / (2 * math.pi * rotations)) / (2 * math.log(theta))

    low = max(math.floor(pair_index(beta_fast)), 0)
    high = min(math.ceil(pair_index(beta_slow)), dim - 1)
    ramp = (torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)
    return ramp.clamp(0, 1)


def precompute_freqs_cis(dim: int, seqlen: int, theta: float = 10000.0, *, factor: float = 1.0,
                         original_seq_len: int = 0, beta_fast: float = 32, beta_slow: float = 1) -> torch.Tensor:
    """Complex rotations e^{i·m·θ_j} for positions m < seqlen and θ_j = theta^(-2j/dim), j < dim/2.

    With factor > 1 and original_seq_len > 0 the frequencies get YaRN's correction (``yarn_ramp``): slow pairs
    become θ_j / factor, fast pairs stay. Returns a complex64 tensor [seqlen, dim // 2]. ``dim`` must be even: RoPE
    rotates pairs of channels.
    """
    _positive_int("dim", dim)
    _positive_int("seqlen", seqlen)
    if dim % 2:
        raise ValueError(f"RoPE dim must be even (it rotates pairs of channels), got {dim}")
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta!r}")
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if factor != 1 and original_seq_len:
        ramp = yarn_ramp(dim, theta, original_seq_len, beta_fast, beta_slow)
        freqs = freqs / factor * ramp + freqs * (1 - ramp)
    angles = torch.outer(torch.arange(seqlen, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def rope_freqs_cis(args: ModelArgs) -> torch.Tensor:
    """MLA's decoupled-RoPE table, as the official ``precompute_freqs_cis(args)``: [max_seq_len, qk_rope_head_dim // 2].

    YaRN (rope_factor, beta_fast, beta_slow) is on exactly when max_seq_len > original_seq_len (V3 §4.3).
    """
    yarn = args.max_seq_len > args.original_seq_len
    return precompute_freqs_cis(args.qk_rope_head_dim, args.max_seq_len, args.rope_theta,
                                factor=args.rope_factor if yarn else 1.0, original_seq_len=args.original_seq_len,
                                beta_fast=args.beta_fast, beta_slow=args.beta_slow)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x[2j], x[2j+1]) as complex numbers, the official DeepSeek-V3 layout.

    x: [batch, seqlen, heads, dim] (dim even); freqs_cis: [seqlen, dim // 2]. Returns x's shape and dtype.
    HF's rotate-half layout gives the same attention scores only after de-interleaving q and k the same way.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [batch, seqlen, heads, dim], got shape {tuple(x.shape)}")
    if x.shape[-1] % 2:
        raise ValueError(f"RoPE dim must be even, got {x.shape[-1]}")
    if freqs_cis.shape != (x.shape[1], x.shape[-1] // 2):
        raise ValueError(f"freqs_cis must be [{x.shape[1]}, {x.shape[-1] // 2}], got {tuple(freqs_cis.shape)}")
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * freqs_cis.view(1, x.shape[1], 1, -1)).flatten(3)
    return out.type_as(x)


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """Reorder the last dim from adjacent pairs (x0, x1, x2, x3, ...) to halves (x0, x2, ..., x1, x3, ...). [..., d]."""
    if x.shape[-1] % 2:
        raise ValueError(f"RoPE dim must be even, got {x.shape[-1]}")
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF's helper: [x1, x2] -> [-x2, x1] on the two halves of the last dim. [..., d] -> [..., d]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_emb_half(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """HF's rotate-half RoPE: channel j pairs with j + d/2, ``x·cos + rotate_half(x)·sin`` with cos = [cos, cos].

    x: [batch, seqlen, heads, dim]; freqs_cis: [seqlen, dim // 2] as for ``apply_rotary_emb``. Equals
    ``deinterleave(apply_rotary_emb(x))`` when given ``deinterleave(x)``: the same rotation on permuted channels, so
    q·k matches only if q and k (i.e. the weights) are de-interleaved alike.
    """
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"x must be [batch, seqlen, heads, even dim], got shape {tuple(x.shape)}")
    if freqs_cis.shape != (x.shape[1], x.shape[-1] // 2):
        raise ValueError(f"freqs_cis must be [{x.shape[1]}, {x.shape[-1] // 2}], got {tuple(freqs_cis.shape)}")
    cos = torch.cat((freqs_cis.real, freqs_cis.real), dim=-1).view(1, x.shape[1], 1, -1)
    sin = torch.cat((freqs_cis.imag, freqs_cis.imag), dim=-1).view(1, x.shape[1], 1, -1)
    return (x.float() * cos + rotate_half(x.float()) * sin).type_as(x)
