"""TinyDeepSeek assembly and the resumable training loop."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dslab.configs import load
from dslab.data import corpus_tensors
from dslab.model import Transformer
from dslab.train import TrainConfig, lr_at, train_lm


@pytest.fixture(scope="module")
def corpus():
    return corpus_tensors(20_000, seed=0)


@pytest.mark.parametrize("name", ["tiny-mla", "tiny-gqa"])
def test_cached_decoding_matches_the_full_forward(name):
    torch.manual_seed(0)
    model = Transformer(load(name).replace(vocab_size=100, max_seq_len=32), max_batch_size=2).eval()
    tokens = torch.randint(0, 100, (2, 12))
    full = model(tokens)
    step = torch.cat([model(tokens[:, :8]), model(tokens[:, 8:10], start_pos=8), model(tokens[:, 10:], 10)], 1)
    assert torch.allclose(full, step, atol=1e-5)
    model.train()
    assert torch.allclose(model(tokens), full, atol=1e-5)  # the uncached training path computes the same function


def test_forward_validates_tokens():
    model = Transformer(load("tiny-gqa").replace(vocab_size=10))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[10]]))
    with pytest.raises(ValueError, match="long tensor"):
        model(torch.zeros(3))


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == 0.1 * 1.0  # the minimum exactly at the last step, not one step past it
    assert lr_at(10, cfg) == 1.0 and all(lr_at(s, cfg) > lr_at(s + 1, cfg) for s in range(10, 99))
    assert lr_at(500, cfg) == 0.1  # past the end (a resumed longer run) it stays at the minimum
    no_warmup = TrainConfig(steps=2, warmup=0, lr=1.0, min_lr_ratio=0.25)
    assert [lr_at(s, no_warmup) for s in range(2)] == [1.0, 0.25]
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


def test_training_lowers_the_loss_and_resumes_exactly(corpus, tmp_path):
    tok, train_ids, val_ids = corpus
    args = load("tiny-gqa").replace(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_dense_layers=2, n_heads=4,
                                    n_kv_heads=2, inter_dim=128)
    cfg = TrainConfig(steps=40, batch_size=8, block_size=32, eval_every=20, checkpoint=str(tmp_path / "ck.pt"),
                      checkpoint_every=20)
    torch.manual_seed(0)
    straight = train_lm(Transformer(args), train_ids, val_ids, replace(cfg, checkpoint=None))
    assert straight[-1]["val_loss"] < straight[0]["loss"] - 1.0

    def crash_after_checkpoint(model, step):  # the kernel dies just after the step-20 checkpoint
        if step == 21:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_lm(Transformer(args), train_ids, val_ids, cfg, after_step=crash_after_checkpoint)
    torch.manual_seed(1)  # a differently initialised model: everything must come back from the checkpoint
    resumed = train_lm(Transformer(args), train_ids, val_ids, cfg)
    assert [r["step"] for r in resumed] == list(range(40))
    assert resumed[-1]["loss"] == pytest.approx(straight[-1]["loss"], rel=1e-4)
    with pytest.raises(ValueError, match="another TrainConfig"):
        train_lm(Transformer(args), train_ids, val_ids, replace(cfg, lr=1e-4))


def test_evaluation_does_not_steer_the_moe_bias(corpus):
    tok, train_ids, val_ids = corpus
    from dslab.train import estimate_loss

    model = Transformer(load("tiny-moe").replace(vocab_size=tok.vocab_size))
    estimate_loss(model, val_ids, TrainConfig(batch_size=4, block_size=16, eval_batches=2))
    assert all(int(m.step_load.sum()) == 0 for m in model.moe_layers())
