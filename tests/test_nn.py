"""RMSNorm, the SwiGLU MLP and RoPE: relative positions, YaRN frequencies and the rotate-half layout."""

import math

import pytest
import torch
from lab_helpers import apply_rotary_emb_half, deinterleave, rotate_half

from dslab.configs import ModelArgs
from dslab.nn import MLP, RMSNorm, apply_rotary_emb, precompute_freqs_cis, rotary_freqs, yarn_mscale, yarn_ramp


def test_rmsnorm_unit_rms_and_weight():
    x = torch.randn(3, 5, 16) * 7
    norm = RMSNorm(16)
    y = norm(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4, rtol=0)
    with torch.no_grad():
        norm.weight.fill_(2.0)
    torch.testing.assert_close(norm(x), 2 * y)


def test_rmsnorm_bad_input():
    with pytest.raises(ValueError, match="dim"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(4, eps=0)
    with pytest.raises(ValueError, match="last dim 4"):
        RMSNorm(4)(torch.randn(2, 3))


def test_mlp_shape_and_params():
    mlp = MLP(8, 24)
    assert mlp(torch.randn(2, 3, 8)).shape == (2, 3, 8)
    assert sum(p.numel() for p in mlp.parameters()) == 3 * 8 * 24
    with pytest.raises(ValueError, match="inter_dim"):
        MLP(8, 0)


def test_freqs_cis_shape_and_odd_dim():
    f = rotary_freqs(8, 5)
    assert f.shape == (5, 4) and f.dtype == torch.complex64
    torch.testing.assert_close(f.abs(), torch.ones(5, 4))
    with pytest.raises(ValueError, match="even"):
        rotary_freqs(7, 5)
    with pytest.raises(ValueError, match="even"):
        apply_rotary_emb(torch.randn(1, 5, 1, 7), f)
    with pytest.raises(ValueError, match="freqs_cis"):
        apply_rotary_emb(torch.randn(1, 4, 1, 8), f)


def test_rope_scores_depend_only_on_position_difference():
    dim, n = 16, 32
    freqs = rotary_freqs(dim, n)
    q, k = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    rot = lambda v, m: apply_rotary_emb(v.view(1, 1, 1, dim), freqs[m:m + 1]).flatten()
    for delta in (0, 3, 11):
        dots = torch.stack([rot(q, m + delta) @ rot(k, m) for m in (0, 5, 17)])
        torch.testing.assert_close(dots, dots[:1].expand(3), atol=1e-5, rtol=0)
    assert not torch.allclose(rot(q, 3) @ rot(k, 0), rot(q, 4) @ rot(k, 0))


def test_rotate_half_on_deinterleaved_dims_matches_adjacent_pairs():
    b, s, h, d = 2, 6, 3, 8
    freqs = rotary_freqs(d, s)
    q, k = torch.randn(b, s, h, d), torch.randn(b, s, h, d)
    qa, ka = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
    qh, kh = apply_rotary_emb_half(deinterleave(q), freqs), apply_rotary_emb_half(deinterleave(k), freqs)
    torch.testing.assert_close(qh, deinterleave(qa), atol=1e-6, rtol=0)
    scores = lambda a, c: torch.einsum("bshd,bthd->bsht", a, c)
    torch.testing.assert_close(scores(qh, kh), scores(qa, ka), atol=1e-5, rtol=0)
    # the common bug: rotate-half on weights laid out in adjacent pairs changes the scores
    wrong = scores(apply_rotary_emb_half(q, freqs), apply_rotary_emb_half(k, freqs))
    assert not torch.allclose(wrong, scores(qa, ka), atol=1e-3)
    assert torch.equal(rotate_half(torch.tensor([1.0, 2, 3, 4])), torch.tensor([-3.0, -4, 1, 2]))
    assert torch.equal(deinterleave(torch.arange(6.0)), torch.tensor([0.0, 2, 4, 1, 3, 5]))


def test_yarn_mscale_v3_and_v2_lite():
    assert yarn_mscale(40, 1.0) == pytest.approx(1.368888, abs=1e-6)
    assert yarn_mscale(40, 1.0) ** 2 == pytest.approx(1.87385, abs=1e-5)
    assert yarn_mscale(40, 0.707) ** 2 == pytest.approx(1.58963, abs=1e-5)
    assert yarn_mscale(1.0) == 1.0


def test_yarn_frequencies_v3():
    """V3's rope dims (64, θ=10^4, 4096 → factor 40): pairs 0-10 keep θ_j, pairs 23+ get θ_j/40, a ramp between."""
    base = rotary_freqs(64, 2)[1].angle()
    yarn = rotary_freqs(64, 2, factor=40, original_seq_len=4096, beta_fast=32, beta_slow=1)[1].angle()
    ratio = yarn / base
    torch.testing.assert_close(ratio[:11], torch.ones(11))
    torch.testing.assert_close(ratio[23:], torch.full((9,), 1 / 40))
    assert torch.all(ratio[11:23] < 1) and torch.all(ratio[11:23] > 1 / 40) and torch.all(ratio.diff() <= 1e-6)
    ramp = yarn_ramp(64, 10000.0, 4096, 32, 1)
    assert ramp[10] == 0 and ramp[23] == 1
    # precompute_freqs_cis(args) turns YaRN on only when max_seq_len > original_seq_len, like the official code
    args = ModelArgs(qk_rope_head_dim=64, max_seq_len=16384, original_seq_len=4096, rope_factor=40)
    torch.testing.assert_close(precompute_freqs_cis(args)[1].angle(), yarn)
    short = args.replace(max_seq_len=4096)
    torch.testing.assert_close(precompute_freqs_cis(short), rotary_freqs(64, 4096))
    with pytest.raises(ValueError, match="beta_fast"):
        yarn_ramp(64, 10000.0, 4096, 1, 32)
    assert math.isclose(rotary_freqs(8, 3, factor=1.0, original_seq_len=2)[2, 0].angle().item(), 2.0,
                        rel_tol=1e-6)
