"""Lab 01 (MoE): exercise references pass their cases, hidden cases are valid, vary and cover the tricky corners
(group-limited routing with negative biased scores, ties in the bias update), wrong answers fail, the balancing
widget reacts to its controls, and the solution builds into a lab with one stub per exercise."""

import random
from pathlib import Path

import nbformat
import pytest
import torch
from lab_helpers import hidden_verdict

from dslab import configs, moe
from dslab.course.build import build_lab
from dslab.course.check import run_cases
from dslab.data import corpus_tensors
from dslab.labs import lab01_moe
from dslab.labs.lab01_moe import exercises as lab01_exercises
from dslab.labs.lab01_moe import experiments as balancing
from dslab.train import TrainConfig

EXERCISES = {ex.id: ex for ex in lab01_exercises.EXERCISES}
ROOT = Path(__file__).resolve().parents[1]


def test_exercise_registry():
    assert lab01_moe.NOTEBOOK == "01_moe"
    assert [(e.id, e.target, e.points) for e in lab01_exercises.EXERCISES] == [
        ("01.route", "route", 2), ("01.bias_update", "bias_update", 2), ("01.max_vio", "max_vio", 2)]


@pytest.mark.parametrize("seed", range(5))
def test_route_hidden_cases_cover_the_corners(seed):
    cases = EXERCISES["01.route"].hidden_cases(random.Random(seed))
    kinds = {(c.args[5], c.args[1] is not None, c.args[3] > 1) for c in cases}
    assert {("sigmoid", True, True), ("softmax", False, True)} <= kinds
    assert any(c.args[1] is not None and c.args[3] > 1 and bool((c.args[1] < -1).all()) for c in cases)
    assert any(c.args[6] != 1.0 for c in cases)
    assert {c.args[5] for c in cases} == {"sigmoid", "softmax"}


def test_bias_hidden_cases_have_ties_with_the_mean():
    cases = EXERCISES["01.bias_update"].hidden_cases(random.Random(0))
    assert any(bool((c.args[1].float() == c.args[1].float().mean()).any()) for c in cases)


# ------------------------------------------------------------------------------------------- wrong answers fail
def _zero_masking(scores, bias, top_k, n_groups=1, topk_groups=1, score_func="sigmoid", route_scale=1.0):
    """HF's old bug: dropped groups masked with 0 instead of -inf."""
    s = moe.affinities(scores, score_func)
    biased = s if bias is None else s + bias
    if n_groups > 1:
        g = biased.unflatten(-1, (n_groups, -1))
        gs = g.topk(2, -1).values.sum(-1) if bias is not None else g.amax(-1)
        drop = torch.ones_like(gs, dtype=torch.bool).scatter(-1, gs.topk(topk_groups, -1).indices, False)
        biased = g.masked_fill(drop.unsqueeze(-1), 0.0).flatten(-2)
    idx = biased.topk(top_k, -1).indices
    w = s.gather(-1, idx)
    if score_func == "sigmoid":
        w = w / w.sum(-1, keepdim=True)
    return w * route_scale, idx


def _bias_in_weights(scores, bias, top_k, n_groups=1, topk_groups=1, score_func="sigmoid", route_scale=1.0):
    """Weights taken from the biased scores."""
    w, idx = moe.route(scores, bias, top_k, n_groups, topk_groups, score_func, route_scale)
    if bias is None:
        return w, idx
    s = moe.affinities(scores, score_func) + bias
    w = s.gather(-1, idx)
    if score_func == "sigmoid":
        w = w / w.sum(-1, keepdim=True)
    return w * route_scale, idx


def _no_scale(scores, bias, top_k, n_groups=1, topk_groups=1, score_func="sigmoid", route_scale=1.0):
    return moe.route(scores, bias, top_k, n_groups, topk_groups, score_func, 1.0)


def _reversed_order(*args):
    """Right answer in another top-k order: must pass."""
    w, idx = moe.route(*args)
    return w.flip(-1), idx.flip(-1)


def _sign_ignoring_ties(bias, load, gamma=0.001):
    load = load.float()
    return bias.float() + gamma * torch.where(load <= load.mean(), 1.0, -1.0)


def _inverted_sign(bias, load, gamma=0.001):
    load = load.float()
    return bias.float() + gamma * torch.sign(load - load.mean())


def _vio_over_max(load):
    load = load.double()
    return float((load.max() - load.mean()) / load.max())


@pytest.mark.parametrize("ex_id, wrong", [
    ("01.route", _zero_masking), ("01.route", _bias_in_weights), ("01.route", _no_scale),
    ("01.bias_update", _sign_ignoring_ties), ("01.bias_update", _inverted_sign), ("01.max_vio", _vio_over_max)])
def test_wrong_answers_fail_hidden_cases(ex_id, wrong):
    ex = EXERCISES[ex_id]
    for seed in range(3):
        assert any(msg is not None for msg in hidden_verdict(ex, wrong, seed)), (wrong.__name__, seed)


def test_zero_masking_fails_the_public_cases_too():
    ex = EXERCISES["01.route"]
    assert run_cases(ex, _zero_masking, ex.public_cases())[0] == "failed"
    assert run_cases(ex, _bias_in_weights, ex.public_cases())[0] == "failed"


def test_topk_order_does_not_matter():
    ex = EXERCISES["01.route"]
    assert run_cases(ex, _reversed_order, ex.public_cases())[0] == "passed"
    assert hidden_verdict(ex, _reversed_order) == [None] * 7


def test_max_vio_accepts_a_zero_dim_tensor():
    ex = EXERCISES["01.max_vio"]
    tensor_answer = lambda load: (load.double().max() / load.double().mean()) - 1  # noqa: E731
    assert run_cases(ex, tensor_answer, ex.public_cases())[0] == "passed"


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError("Exercise 1.1: ...")

    for ex in EXERCISES.values():
        assert run_cases(ex, stub, ex.public_cases())[0] == "not-attempted"


# ------------------------------------------------------------------------------------------------------- widget
def test_balance_explorer_defaults_are_deterministic():
    from dslab.labs.lab01_moe.widgets import balance_explorer

    a, _ = balance_explorer()
    b, _ = balance_explorer()
    assert a == b
    assert a["MaxVio, aux-loss-free (γ)"] < a["MaxVio, no balancing"]


def test_balance_explorer_reacts_to_its_controls():
    from dslab.labs.lab01_moe.widgets import balance_controls, balance_explorer
    from dslab.widgets import Explorer

    explorer = Explorer(balance_explorer, balance_controls())
    before = dict(explorer.numbers)
    explorer.controls["alpha"].value = 10.0
    assert explorer.numbers["router weight change from aux loss"] > before["router weight change from aux loss"]
    assert explorer.numbers["MaxVio, aux loss (α)"] < before["MaxVio, aux loss (α)"]
    explorer.controls["gamma"].value = 1e-4  # too slow to catch up within the run
    assert explorer.numbers["MaxVio, aux-loss-free (γ)"] > before["MaxVio, aux-loss-free (γ)"]


# ------------------------------------------------------------------------------------------------------- build
def test_solution_builds_into_a_lab_with_one_stub_per_exercise():
    path = ROOT / "solutions" / "01_moe.ipynb"
    lab = build_lab(nbformat.read(path, as_version=4), "01_moe")
    sources = "\n".join(c.source for c in lab.cells if c.cell_type == "code")
    for ex in lab01_exercises.EXERCISES:
        assert f'NotImplementedError("Exercise {ex.number}:' in sources
    assert "### BEGIN SOLUTION" not in sources


# ------------------------------------------------------------------------------------------ experiments
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
    assert none.loads.shape == (16, 1, args.n_routed_experts) and none.vio.shape == (16, 1)
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
    assert torch.equal(sim.vio["none"], sim.vio["aux"])  # α = 0: the aux run is the unbalanced run
    assert sim.drift == 0.0
    assert float(sim.vio["aux_free"][-10:].mean()) < 0.5 * float(sim.vio["none"][-10:].mean())
