"""Small shared layers: RMSNorm, the SwiGLU MLP and rotary position embeddings (RoPE), with YaRN.

Names follow DeepSeek-V3's ``inference/model.py`` (``w1``/``w2``/``w3``, ``precompute_freqs_cis(args)``,
``apply_rotary_emb``) so the two can be read side by side. ``rotary_freqs(dim, seqlen, theta)`` is the plain RoPE
table for any head width, which the official helper builds from a config.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dslab import validate

if TYPE_CHECKING:
    from dslab.configs import ModelArgs


class RMSNorm(nn.Module):
    """Root-mean-square norm: ``x / rms(x) * weight``; eps 1e-6 as in DeepSeek-V3. Input [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = validate.integer("dim", dim, 1)
        self.eps = validate.real("eps", eps, 0, lo_open=True)
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
        self.w1 = nn.Linear(validate.integer("dim", dim, 1), validate.integer("inter_dim", inter_dim, 1), bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature sqrt(1/t) = 0.1·mscale·ln(factor) + 1 (V3 §4.3), 1.0 when factor <= 1.

    MLA multiplies its softmax scale by the square of it: V3 (factor 40, mscale 1.0) gives 1.36889² = 1.87385.
    """
    validate.real("mscale", mscale, 0, lo_open=True)
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_ramp(dim: int, theta: float, original_seq_len: int, beta_fast: float = 32,
              beta_slow: float = 1) -> torch.Tensor:
    """Per channel pair j < dim/2: 0 where RoPE keeps its frequency, 1 where YaRN divides it by the factor.

    Pair j turns L/(2π·theta^(2j/dim)) times over the original context L. Pairs turning more than beta_fast times
    resolve local order and are kept; pairs turning fewer than beta_slow times never saw a full turn in training and
    are interpolated; the ones between are blended linearly. Returns float32 [dim // 2].
    """
    validate.integer("original_seq_len", original_seq_len, 1)
    if not beta_fast > beta_slow > 0:
        raise ValueError(f"need beta_fast > beta_slow > 0, got beta_fast={beta_fast!r}, beta_slow={beta_slow!r}")

    def pair_index(rotations: float) -> float:  # j solving L / (2π·theta^(2j/dim)) = rotations
        return dim * math.log(original_seq_len / (2 * math.pi * rotations)) / (2 * math.log(theta))

    low = max(math.floor(pair_index(beta_fast)), 0)
    high = min(math.ceil(pair_index(beta_slow)), dim - 1)
    ramp = (torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)
    return ramp.clamp(0, 1)


def rotary_freqs(dim: int, seqlen: int, theta: float = 10000.0, *, factor: float = 1.0, original_seq_len: int = 0,
                 beta_fast: float = 32, beta_slow: float = 1) -> torch.Tensor:
    """Complex rotations e^{i·m·θ_j} for positions m < seqlen and θ_j = theta^(-2j/dim), j < dim/2.

    With factor > 1 and original_seq_len > 0 the frequencies get YaRN's correction (``yarn_ramp``): slow pairs
    become θ_j / factor, fast pairs stay. Returns a complex64 tensor [seqlen, dim // 2]. ``dim`` must be even: RoPE
    rotates pairs of channels.
    """
    validate.integer("dim", dim, 1)
    validate.integer("seqlen", seqlen, 1)
    if dim % 2:
        raise ValueError(f"RoPE dim must be even (it rotates pairs of channels), got {dim}")
    validate.real("theta", theta, 0, lo_open=True)
    validate.real("factor", factor, 0, lo_open=True)
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if factor != 1 and original_seq_len:
        ramp = yarn_ramp(dim, theta, original_seq_len, beta_fast, beta_slow)
        freqs = freqs / factor * ramp + freqs * (1 - ramp)
    angles = torch.outer(torch.arange(seqlen, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def precompute_freqs_cis(args: ModelArgs) -> torch.Tensor:
    """MLA's decoupled-RoPE table, as the official ``precompute_freqs_cis(args)``: [max_seq_len, qk_rope_head_dim // 2].

    YaRN (rope_factor, beta_fast, beta_slow) is on exactly when max_seq_len > original_seq_len (V3 §4.3).
    """
    yarn = args.max_seq_len > args.original_seq_len
    return rotary_freqs(args.qk_rope_head_dim, args.max_seq_len, args.rope_theta,
                        factor=args.rope_factor if yarn else 1.0, original_seq_len=args.original_seq_len,
                        beta_fast=args.beta_fast, beta_slow=args.beta_slow)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x[2j], x[2j+1]) as complex numbers, the official DeepSeek-V3 layout.

    x: [batch, seqlen, heads, dim] (dim even); freqs_cis: [seqlen, dim // 2]. Returns x's shape and dtype.
    (HF transformers rotates the two halves of the head instead; that equals this after de-interleaving q and k alike.)
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
