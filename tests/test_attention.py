"""MHA / GQA / MQA baselines: incremental decoding, causality, grouping and cache accounting."""

import pytest
import torch

from dslab import accounting
from dslab.attention import Attention, causal_mask
from dslab.configs import ModelArgs

KINDS = {"mha": 4, "gqa": 2, "mqa": 1}


def attn_args(kind: str) -> ModelArgs:
    return ModelArgs(attn=kind, dim=32, n_heads=4, n_kv_heads=KINDS[kind], n_layers=2, max_seq_len=16)


def make(kind: str, max_batch_size: int = 2, seed: int = 0) -> Attention:
    """A module in eval (decoding) mode."""
    torch.manual_seed(seed)
    return Attention(attn_args(kind), max_batch_size).eval()


@pytest.mark.parametrize("kind", list(KINDS))
def test_incremental_decoding_equals_full_pass(kind):
    attn = make(kind)
    x = torch.randn(2, 10, 32)
    full = attn(x)
    parts = [attn(x[:, :4], 0), attn(x[:, 4:7], 4)] + [attn(x[:, i:i + 1], i) for i in range(7, 10)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_training_path_equals_decoding_path(kind):
    """train(): SDPA within x, no cache, any batch size; eval(): the cached path. Same function."""
    attn = make(kind)
    x = torch.randn(3, 9, 32)  # batch 3 > max_batch_size: only the training path accepts it
    trained = attn.train()(x)
    assert not attn.k_cache.any()
    decoded = torch.cat([attn.eval()(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(trained, decoded, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="training mode"):
        attn.train()(x, start_pos=2)


@pytest.mark.parametrize("kind", list(KINDS))
def test_causal_future_tokens_do_not_change_the_past(kind):
    attn = make(kind)
    x = torch.randn(1, 8, 32)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 3, 32)
    torch.testing.assert_close(attn(x)[:, :5], attn(y)[:, :5])
    assert not torch.allclose(attn(x)[:, 5:], attn(y)[:, 5:])


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = make("gqa")
    mha = make("mha")
    hd, groups = gqa.head_dim, gqa.n_heads // gqa.n_kv_heads
    with torch.no_grad():
        mha.wq.weight.copy_(gqa.wq.weight)
        mha.wo.weight.copy_(gqa.wo.weight)
        for name in ("wk", "wv"):  # query head h reads kv head h // groups
            w = getattr(gqa, name).weight.view(gqa.n_kv_heads, hd, -1).repeat_interleave(groups, 0)
            getattr(mha, name).weight.copy_(w.reshape(-1, w.shape[-1]))
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_cache_bytes(kind):
    attn = make(kind, max_batch_size=3)
    n_kv = KINDS[kind]
    assert attn.cache_bytes() == 2 * 3 * 16 * n_kv * 8 * 4
    args = attn_args(kind)
    assert attn.cache_bytes() == accounting.kv_cache_bytes(args, 3 * 16, bits=32) / args.n_layers


def test_causal_mask_with_cached_prefix():
    m = causal_mask(3, 2)
    assert m.shape == (3, 5)
    assert torch.equal(torch.isinf(m), torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]).bool())
    assert causal_mask(1, 7) is None


def test_bad_input():
    attn = make("gqa", max_batch_size=2)
    with pytest.raises(ValueError, match="max_batch_size"):
        attn(torch.randn(3, 1, 32))
    with pytest.raises(ValueError, match="max_seq_len"):
        attn(torch.randn(1, 4, 32), start_pos=13)
    with pytest.raises(ValueError, match="start_pos"):
        attn(torch.randn(1, 1, 32), start_pos=-1)
    with pytest.raises(ValueError, match="x must be"):
        attn(torch.randn(1, 4, 31))
    with pytest.raises(ValueError, match="x must be"):
        attn(torch.randn(4, 32))
    with pytest.raises(ValueError, match="max_batch_size"):
        Attention(attn_args("mha"), max_batch_size=0)
    with pytest.raises(ValueError, match="attn"):
        Attention(ModelArgs())  # an MLA config
    with pytest.raises(ValueError, match="head_dim"):
        Attention(ModelArgs(attn="mha", dim=36, n_heads=4, n_layers=2))  # head_dim 9 cannot be rotated
