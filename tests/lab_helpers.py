"""Helpers shared by the per-lab exercise tests."""

import random


def hidden_verdict(ex, answer, seed: int = 0) -> list:
    """The grader's comparison on hidden cases drawn with ``seed``: one message (None = passed) per case."""
    return [ex.compare(ex.reference(*c.args), answer(*c.args)) for c in ex.hidden_cases(random.Random(seed))]


# ------------------------------------------------------------------------------ HF transformers' RoPE layout
# Kept here, not in dslab: the course uses the official adjacent-pair layout, and this one is a wrong answer for it
# (a known mistake when porting from HF: right rotation, wrong channel pairing).
def deinterleave(x):
    """Reorder the last dim from adjacent pairs (x0, x1, x2, x3, ...) to halves (x0, x2, ..., x1, x3, ...). [..., d]."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def rotate_half(x):
    """HF's helper: [x1, x2] -> [-x2, x1] on the two halves of the last dim. [..., d] -> [..., d]."""
    import torch

    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_emb_half(x, freqs_cis):
    """HF's rotate-half RoPE: channel j pairs with j + d/2. x [B, S, H, d]; freqs_cis [S, d/2] (complex).

    Equals ``deinterleave(apply_rotary_emb(x))`` when given ``deinterleave(x)``: the same rotation on permuted
    channels, so scores match only if q and k (i.e. the weights) are de-interleaved alike.
    """
    import torch

    cos = torch.cat((freqs_cis.real, freqs_cis.real), dim=-1).view(1, x.shape[1], 1, -1)
    sin = torch.cat((freqs_cis.imag, freqs_cis.imag), dim=-1).view(1, x.shape[1], 1, -1)
    return (x.float() * cos + rotate_half(x.float()) * sin).type_as(x)
