"""MLA: naive ≡ absorbed (outputs and caches), incremental decoding, causality, softmax scale, cache accounting."""

import pytest
import torch

from dslab import accounting
from dslab.configs import ModelArgs
from dslab.mla import (
    MLA,
    absorb_query,
    absorbed_attention,
    absorbed_output,
    absorbed_scores,
    cache_elements_per_layer,
    expand_latent,
    latent_cache_step,
    softmax_scale,
)
from dslab.nn import RMSNorm, rotary_freqs

SMALL = dict(dim=64, n_heads=4, n_layers=2, q_lora_rank=0, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
             v_head_dim=12, max_seq_len=24, original_seq_len=24)
V3 = dict(dim=7168, n_heads=128, n_layers=61, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
          qk_rope_head_dim=64, v_head_dim=128, rope_factor=40, mscale=1.0, original_seq_len=4096)
VARIANTS = {"plain": {}, "q_lora": {"q_lora_rank": 24}, "yarn": {"original_seq_len": 8, "rope_factor": 4.0}}


def small(**changes) -> ModelArgs:
    return ModelArgs(**{**SMALL, **changes})


def twins(args: ModelArgs, max_batch_size: int = 2) -> dict[str, MLA]:
    """Absorbed and naive (both cache layouts) modules with the same weights, in eval (decoding) mode."""
    torch.manual_seed(0)
    mods = {"absorb": MLA(args, max_batch_size, "absorb"), "naive": MLA(args, max_batch_size, "naive"),
            "naive_bthd": MLA(args, max_batch_size, "naive", cache_layout="bthd")}
    for m in mods.values():
        m.load_state_dict(mods["absorb"].state_dict())
        m.eval()
    return mods


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_naive_equals_absorbed_outputs_and_caches(variant):
    args = small(**VARIANTS[variant])
    mods = twins(args)
    x = torch.randn(2, 20, args.dim)
    outs = {k: m(x) for k, m in mods.items()}
    torch.testing.assert_close(outs["naive"], outs["absorb"], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs["naive_bthd"], outs["absorb"], atol=1e-5, rtol=0)
    # the naive cache holds wkv_b applied to the absorbed cache's latent, plus the shared RoPE key in every head
    a, n = mods["absorb"], mods["naive"]
    k_nope, v = expand_latent(a.kv_cache[:, :20], a.wkv_b.weight, 4, 16, 12)
    k_cached, v_cached = n.k_cache[:, :, :20].transpose(1, 2), n.v_cache[:, :, :20].transpose(1, 2)
    torch.testing.assert_close(k_cached[..., :16], k_nope, atol=1e-5, rtol=0)
    torch.testing.assert_close(v_cached, v, atol=1e-5, rtol=0)
    torch.testing.assert_close(k_cached[..., 16:], a.pe_cache[:, :20].unsqueeze(2).expand(-1, -1, 4, -1))
    torch.testing.assert_close(mods["naive_bthd"].k_cache[:, :20], k_cached)
    manual = torch.nn.functional.linear(a.kv_cache[:, :20], a.wkv_b.weight).view(2, 20, 4, 28)
    torch.testing.assert_close(manual[..., :16], k_nope, atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", ["absorb", "naive"])
@pytest.mark.parametrize("variant", ["q_lora", "yarn"])
def test_incremental_decoding_equals_full_pass(impl, variant):
    torch.manual_seed(0)
    mla = MLA(small(**VARIANTS[variant]), 2, impl).eval()
    x = torch.randn(2, 12, 64)
    full = mla(x)
    parts = [mla(x[:, :5], 0), mla(x[:, 5:8], 5)] + [mla(x[:, i:i + 1], i) for i in range(8, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_path_equals_decoding_path(variant):
    """train(): SDPA over x itself, no cache, any batch size; eval(): the cached path. Same function."""
    torch.manual_seed(0)
    mla = MLA(small(**VARIANTS[variant]), 2)
    x = torch.randn(3, 10, 64)  # batch 3 > max_batch_size: only the training path accepts it
    trained = mla.train()(x)
    assert not mla.kv_cache.any()  # nothing cached while training
    decoded = torch.cat([mla.eval()(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(trained, decoded, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="training mode"):
        mla.train()(x, start_pos=1)


@pytest.mark.parametrize("impl", ["absorb", "naive"])
def test_causal_future_tokens_do_not_change_the_past(impl):
    torch.manual_seed(0)
    mla = MLA(small(), 1, impl).eval()
    x = torch.randn(1, 10, 64)
    y = x.clone()
    y[:, 6:] = torch.randn(1, 4, 64)
    torch.testing.assert_close(mla(x)[:, :6], mla(y)[:, :6])
    assert not torch.allclose(mla(x)[:, 6:], mla(y)[:, 6:])


def test_parameter_names_follow_the_official_code():
    names = lambda args: {k for k, _ in MLA(args, 1).named_parameters()}
    assert names(small()) == {"wq.weight", "wkv_a.weight", "kv_norm.weight", "wkv_b.weight", "wo.weight"}
    assert names(small(q_lora_rank=24)) == {"wq_a.weight", "q_norm.weight", "wq_b.weight", "wkv_a.weight",
                                            "kv_norm.weight", "wkv_b.weight", "wo.weight"}
    mla = MLA(small(), 1)
    assert mla.wkv_a.weight.shape == (32 + 8, 64) and mla.wkv_b.weight.shape == (4 * (16 + 12), 32)
    assert mla.wo.weight.shape == (64, 4 * 12)


def test_pure_functions_match_the_naive_scores():
    torch.manual_seed(0)
    mla = MLA(small(), 1)
    x = torch.randn(1, 6, 64)
    freqs = mla.freqs_cis[:6]
    c_kv, k_pe = latent_cache_step(x, mla.wkv_a.weight, mla.kv_norm.weight, freqs)
    assert c_kv.shape == (1, 6, 32) and k_pe.shape == (1, 6, 8)
    torch.testing.assert_close(c_kv.pow(2).mean(-1), torch.ones(1, 6), atol=1e-4, rtol=0)  # kv_norm applied
    torch.testing.assert_close(c_kv, mla.kv_norm(torch.nn.functional.linear(x, mla.wkv_a.weight[:32])))
    q_nope, q_pe = torch.randn(1, 6, 4, 16), torch.randn(1, 6, 4, 8)
    k_nope, v = expand_latent(c_kv, mla.wkv_b.weight, 4, 16, 12)
    k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, 4, -1)], -1)
    naive = torch.einsum("bshd,bthd->bsht", torch.cat([q_nope, q_pe], -1), k) * 0.1
    q_abs = absorb_query(q_nope, mla.wkv_b.weight, 4, 16, 12)
    assert q_abs.shape == (1, 6, 4, 32)
    torch.testing.assert_close(absorbed_scores(q_abs, q_pe, c_kv, k_pe, 0.1), naive, atol=1e-5, rtol=0)
    probs = naive.softmax(-1)
    torch.testing.assert_close(absorbed_output(probs, c_kv, mla.wkv_b.weight, 4, 16, 12),
                               torch.einsum("bsht,bthd->bshd", probs, v), atol=1e-5, rtol=0)
    torch.testing.assert_close(absorbed_attention(q_nope, q_pe, c_kv, k_pe, mla.wkv_b.weight, 0.1),
                               torch.einsum("bsht,bthd->bshd", probs, v), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="wkv_b"):
        absorb_query(q_nope, mla.wkv_b.weight, 4, 16, 16)
    with pytest.raises(ValueError, match="wkv_b"):
        absorbed_attention(torch.randn(1, 6, 4, 28), q_pe, c_kv, k_pe, mla.wkv_b.weight, 0.1)


def test_latent_cache_step_normalizes_the_latent_and_rotates_the_shared_key():
    torch.manual_seed(0)
    x, wkv_a, w = torch.randn(2, 3, 16), torch.randn(12, 16) / 4, torch.rand(8) + 0.5
    c_kv, k_pe = latent_cache_step(x, wkv_a, w, rotary_freqs(4, 8)[5:])
    norm = RMSNorm(8)
    norm.weight.data.copy_(w)
    torch.testing.assert_close(c_kv, norm(x @ wkv_a[:8].T))
    # the RoPE key at position 0 is not rotated; norms are kept at every position
    c0, k0 = latent_cache_step(x, wkv_a, w, rotary_freqs(4, 3))
    torch.testing.assert_close(k0[:, 0], (x @ wkv_a[8:].T)[:, 0])
    torch.testing.assert_close(k_pe.norm(dim=-1), (x @ wkv_a[8:].T).norm(dim=-1))
    torch.testing.assert_close(c0, c_kv)  # the latent does not depend on the position


def test_softmax_scale():
    assert softmax_scale(ModelArgs(**V3, max_seq_len=4096)) == pytest.approx(192 ** -0.5)
    assert softmax_scale(ModelArgs(**V3, max_seq_len=16384)) == pytest.approx(0.135234, abs=1e-6)
    v2_lite = ModelArgs(mscale=0.707, rope_factor=40, max_seq_len=16384, original_seq_len=4096)
    assert softmax_scale(v2_lite) == pytest.approx(0.114721, abs=1e-6)
    assert MLA(small(**VARIANTS["yarn"]), 1).softmax_scale == pytest.approx(24 ** -0.5 * (0.1 * 1.3862944 + 1) ** 2)


@pytest.mark.parametrize("q_lora_rank", [0, 24])
def test_cache_bytes_measured_from_the_tensors(q_lora_rank):
    args = small(q_lora_rank=q_lora_rank)
    absorb, naive = MLA(args, 3, "absorb"), MLA(args, 3, "naive")
    tokens = 3 * args.max_seq_len
    assert absorb.cache_bytes() == tokens * (32 + 8) * 4
    assert absorb.cache_bytes() == accounting.kv_cache_bytes(args, tokens, bits=32) / args.n_layers
    assert absorb.cache_bytes() == tokens * cache_elements_per_layer(args) * 4
    assert naive.cache_bytes() == tokens * 4 * (16 + 8 + 12) * 4
    assert naive.cache_bytes() == tokens * cache_elements_per_layer(args, "naive") * 4
    assert naive.cache_bytes() / absorb.cache_bytes() == 4 * (16 + 8 + 12) / (32 + 8)
    assert MLA(args, 3, "naive", cache_layout="bthd").cache_bytes() == naive.cache_bytes()


def test_cache_elements_per_layer():
    v3 = ModelArgs(**V3)
    assert cache_elements_per_layer(v3) == 576 == accounting.kv_elements_per_token(v3) / 61
    assert cache_elements_per_layer(v3, "naive") == 128 * (128 + 64 + 128) == 40_960
    # naive MLA caches more than MHA with the same heads: every head also stores the RoPE key
    mha = ModelArgs(attn="mha", dim=7168, n_heads=128, head_dim=128, n_layers=61, n_routed_experts=0)
    assert cache_elements_per_layer(v3, "naive") > accounting.kv_elements_per_token(mha) / 61 == 32_768
    with pytest.raises(ValueError, match="attn"):
        cache_elements_per_layer(mha)


def test_bad_input():
    with pytest.raises(ValueError, match="kv_lora_rank"):
        ModelArgs(**{**SMALL, "kv_lora_rank": 0})
    with pytest.raises(ValueError, match="qk_rope_head_dim"):
        ModelArgs(**{**SMALL, "qk_rope_head_dim": 7})
    mha = dict(attn="mha", dim=64, n_heads=4, n_layers=2)  # a classic config skips ModelArgs' MLA checks ...
    with pytest.raises(ValueError, match="attn='mla'"):  # ... so MLA refuses it rather than trusting its widths
        MLA(ModelArgs(**mha, kv_lora_rank=0))
    with pytest.raises(ValueError, match="attn_impl"):
        MLA(small(), 1, "flash")
    with pytest.raises(ValueError, match="cache_layout"):
        MLA(small(), 1, "naive", cache_layout="tbhd")
    mla = MLA(small(), 2).eval()
    with pytest.raises(ValueError, match="max_seq_len"):
        mla(torch.randn(1, 2, 64), start_pos=23)
    with pytest.raises(ValueError, match="max_batch_size"):
        mla(torch.randn(3, 1, 64))
    with pytest.raises(ValueError, match="x must be"):
        mla(torch.randn(1, 2, 63))
    with pytest.raises(ValueError, match="x must be"):
        mla(torch.randn(2, 64))
    with pytest.raises(ValueError, match="attn_impl"):
        cache_elements_per_layer(small(), "flash")


def test_benchmark_smoke():
    """dslab.bench.mla at toy sizes: the paths agree, cache ratios follow the formula, the thread count is restored."""
    from dslab.bench import mla as bench

    threads = torch.get_num_threads()
    m = bench.measure(4, 64, rounds=1, official=True, threads=1)
    assert m["max_abs_diff"] < 1e-5 and torch.get_num_threads() == threads
    assert m["cache_ratio"] == m["cache_ratio_formula"] == 4 * (64 + 32 + 64) / (256 + 32)
    assert set(m["ms"]) == {"absorb", "naive", "naive_official"} and m["speedup_vs_official"] > 0
    p = bench.measure_prefill(2, 32, rounds=1, threads=1)
    assert p["speedup"] > 0 and set(p["ms"]) == {"absorb", "naive"}
