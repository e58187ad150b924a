"""dslab.balancing: a tiny seeded run where the aux-loss-free bias lowers MaxVio, the character classes, and the
router-only simulation behind lab 01's widget."""

import pytest
import torch

from dslab import balancing, configs
from dslab.data import corpus_tensors
from dslab.train import TrainConfig


def _tiny():
    tok, train_ids, val_ids = corpus_tensors(5_000, seed=0)
    args = configs.load("tiny-moe").replace(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2,
                                            kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                                            inter_dim=80, moe_inter_dim=16)
    return tok, train_ids, val_ids, args


def test_aux_free_lowers_max_vio_and_aux_loss_is_logged():
    tok, train_ids, val_ids, args = _tiny()
    cfg = TrainConfig(steps=16, batch_size=2, block_size=32, warmup=2, eval_every=16, eval_batches=1, lr=1e-2)
    none = balancing.train_method(balancing.Method("none"), args, train_ids, val_ids, cfg)
    free = balancing.train_method(balancing.Method("free", gamma=0.05), args, train_ids, val_ids, cfg)
    short = TrainConfig(steps=2, batch_size=2, block_size=32, warmup=1, eval_every=2, eval_batches=1)
    aux = balancing.train_method(balancing.Method("aux", "sequence", alpha=0.01), args, train_ids, val_ids, short)
    assert none.loads.shape == (16, 1, args.n_routed_experts) and none.max_vio.shape == (16, 1)
    assert int(none.loads[0, 0].sum()) == 2 * 32 * args.n_activated_experts  # every token routed, none dropped
    assert free.final_max_vio() < none.final_max_vio()
    assert all("extra_loss" in row for row in aux.history) and "extra_loss" not in none.history[0]
    assert float(free.model.moe_layers()[0].gate.bias.abs().sum()) > 0
    assert float(none.model.moe_layers()[0].gate.bias.abs().sum()) == 0
    share = balancing.routing_by_class(free.model, tok, val_ids, n_seqs=2, block_size=32)
    assert share.shape == (4, args.n_routed_experts)
    finite = share[~share.isnan().any(1)]
    assert torch.allclose(finite.sum(1), torch.ones(len(finite)))


def test_same_seed_same_initial_model():
    *_, args = _tiny()
    a = balancing.build_model(args, balancing.Method("a"), seed=3)
    b = balancing.build_model(args, balancing.Method("b", "sequence", 0.1), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert b.moe_layers()[0].balance_loss == "sequence" and b.moe_layers()[0].alpha == 0.1


def test_seed_sweep_varies_with_the_seed_and_repeats_with_it():
    _, train_ids, val_ids, args = _tiny()
    cfg = TrainConfig(steps=2, batch_size=2, block_size=32, warmup=1, eval_every=2, eval_batches=1, seed=99)
    free = balancing.Method("free", gamma=0.05)
    sweep = balancing.seed_sweep([free], args, train_ids, val_ids, cfg, seeds=[1, 2, 1])
    a, b, again = sweep["free"]
    assert a.val_loss != b.val_loss and a.val_loss == again.val_loss
    assert torch.equal(a.loads, again.loads) and not torch.equal(a.loads, b.loads)
    with pytest.raises(ValueError, match="seeds"):
        balancing.seed_sweep([free], args, train_ids, val_ids, cfg, seeds=[])


def test_char_class():
    assert [balancing.char_class(c) for c in "7a \n+."] == ["digit", "letter", "space", "space", "punct", "punct"]


def test_simulate_router():
    sim = balancing.simulate_router(gamma=0.01, alpha=0.0, steps=40)
    assert set(sim.loads) == {"none", "aux", "aux_free"}
    assert sim.loads["none"].shape == (40, 16) and int(sim.loads["none"][0].sum()) == 256 * 4
    assert torch.equal(sim.max_vio["none"], sim.max_vio["aux"])  # α = 0: the aux run is the unbalanced run
    assert sim.drift == 0.0
    assert float(sim.max_vio["aux_free"][-10:].mean()) < 0.5 * float(sim.max_vio["none"][-10:].mean())
