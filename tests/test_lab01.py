"""Lab 01 (MoE): the registry in notebook order, references pass, hidden cases vary and cover the tricky corners
(group-limited routing with negative biased scores, ties in the bias update), every known mistake fails and gets its
own hint, the debug exercise ships its buggy version, the balancing explorer reacts, and the experiments hold."""

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
from dslab.labs.lab01_moe import experiments
from dslab.train import TrainConfig

EXERCISES = {ex.id: ex for ex in lab01_exercises.EXERCISES}
ROOT = Path(__file__).resolve().parents[1]


def test_exercise_registry_in_notebook_order_with_mixed_kinds():
    assert lab01_moe.NOTEBOOK == "01_moe"
    assert [(e.id, e.number, e.target) for e in lab01_exercises.EXERCISES] == [
        ("01.route", "1.1", "route"), ("01.moe_forward", "1.2", "moe_forward"), ("01.max_vio", "1.3", "max_vio"),
        ("01.collapsed", "1.4", "collapsed_max_vio"), ("01.bias_update", "1.5", "bias_update"),
        ("01.balance_loss", "1.6", "sequence_balance_loss")]
    assert {e.kind for e in lab01_exercises.EXERCISES} == {"implement", "predict", "debug"}
    nb = nbformat.read(ROOT / "solutions" / "01_moe.ipynb", as_version=4)
    checked = [c.source for c in nb.cells if c.cell_type == "code" and "dslab.check(" in c.source]
    assert [s.split('"')[1] for s in checked] == list(EXERCISES)  # each check follows its exercise, in order


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


def test_moe_forward_cases_cover_a_layer_without_shared_expert_and_several_slots_per_token():
    cases = EXERCISES["01.moe_forward"].hidden_cases(random.Random(0))
    assert any(c.args[6] is None for c in cases) and any(c.args[6] is not None for c in cases)
    assert all(c.args[2].shape[1] >= 1 for c in cases) and any(c.args[2].shape[1] > 1 for c in cases)


# ------------------------------------------------------------------------------------------- wrong answers fail
def test_topk_order_does_not_matter():
    def reversed_order(*args):
        w, idx = moe.route(*args)
        return w.flip(-1), idx.flip(-1)

    ex = EXERCISES["01.route"]
    assert run_cases(ex, reversed_order, ex.public_cases())[0] == "passed"
    assert hidden_verdict(ex, reversed_order) == [None] * 7


def test_max_vio_accepts_a_zero_dim_tensor_and_numpy():
    import numpy as np

    ex = EXERCISES["01.max_vio"]
    tensor_answer = lambda load: (load.double().max() / load.double().mean()) - 1  # noqa: E731
    numpy_answer = lambda load: np.float64(moe.max_vio(load))  # noqa: E731
    assert run_cases(ex, tensor_answer, ex.public_cases())[0] == "passed"
    assert run_cases(ex, numpy_answer, ex.public_cases())[0] == "passed"


def test_moe_forward_reference_equals_the_module():
    args = configs.load("tiny-moe")
    torch.manual_seed(0)
    layer = moe.MoE(args)
    x = torch.randn(32, args.dim)
    with torch.no_grad():
        w, idx = layer.gate(x)
        s = layer.shared_experts
        got = experiments.moe_forward_reference(x, w, idx, layer.experts.w1, layer.experts.w2, layer.experts.w3,
                                                s.w1.weight, s.w2.weight, s.w3.weight)
        torch.testing.assert_close(got, layer(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------- widget
def test_balance_explorer_defaults_are_deterministic():
    from dslab.labs.lab01_moe.widgets import balance_explorer

    a, _ = balance_explorer()
    b, _ = balance_explorer()
    assert a == b
    assert a["MaxVio, aux-loss-free bias (γ)"] < a["MaxVio, no balancing"]
    assert a["MaxVio, aux loss (α)"] < a["MaxVio, no balancing"]  # at the default α the aux loss balances too


def test_balance_explorer_reacts_to_its_controls():
    from dslab.labs.lab01_moe.widgets import balance_controls, balance_explorer
    from dslab.widgets import Explorer

    explorer = Explorer(balance_explorer, balance_controls())
    before = dict(explorer.numbers)
    explorer.controls["alpha"].value = 0.01  # too weak to move the router
    assert explorer.numbers["MaxVio, aux loss (α)"] > before["MaxVio, aux loss (α)"]
    assert explorer.numbers["affinity drift, aux loss"] < before["affinity drift, aux loss"]
    explorer.controls["gamma"].value = 1e-4  # too slow to catch up within the run
    assert explorer.numbers["MaxVio, aux-loss-free bias (γ)"] > before["MaxVio, aux-loss-free bias (γ)"]
    kept = "preference kept, aux-loss-free bias (γ)"
    assert explorer.numbers[kept] > before[kept]


# ------------------------------------------------------------------------------------------------------- build
def test_solution_builds_into_a_lab_with_one_stub_per_exercise_and_the_buggy_version_shown():
    path = ROOT / "solutions" / "01_moe.ipynb"
    lab = build_lab(nbformat.read(path, as_version=4), "01_moe")
    sources = "\n".join(c.source for c in lab.cells if c.cell_type == "code")
    for ex in lab01_exercises.EXERCISES:
        assert f'NotImplementedError("Exercise {ex.number}:' in sources
    assert "### BEGIN SOLUTION" not in sources and "### BUGGY VERSION" not in sources
    assert "return bias + gamma * torch.sign(load - load.mean())" in sources  # the bug to find, uncommented


# ------------------------------------------------------------------------------------------ experiments
def _tiny():
    tok, train_ids, val_ids = corpus_tensors(5_000, seed=0)
    args = configs.load("tiny-moe").replace(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2,
                                            kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                                            inter_dim=80, moe_inter_dim=16)
    return tok, train_ids, val_ids, args


def test_aux_free_lowers_max_vio_and_aux_loss_is_logged():
    tok, train_ids, val_ids, args = _tiny()
    cfg = TrainConfig(steps=32, batch_size=2, block_size=32, warmup=2, eval_every=32, eval_batches=1, lr=1e-2)
    none = experiments.train_method(experiments.Method("none"), args, train_ids, val_ids, cfg)
    free = experiments.train_method(experiments.Method("free", gamma=0.05), args, train_ids, val_ids, cfg)
    short = TrainConfig(steps=2, batch_size=2, block_size=32, warmup=1, eval_every=2, eval_batches=1)
    aux = experiments.train_method(experiments.Method("aux", "sequence", alpha=0.01), args, train_ids, val_ids, short)
    assert none.loads.shape == (32, 1, args.n_routed_experts) and none.vio.shape == (32, 1)
    assert int(none.loads[0, 0].sum()) == 2 * 32 * args.n_activated_experts  # every token routed, none dropped
    # One step's MaxVio is noise at this size; over the second half of the run the bias has pulled the load apart.
    assert free.vio[16:].mean() < none.vio[16:].mean()
    assert all("extra_loss" in row for row in aux.history) and "extra_loss" not in none.history[0]
    assert float(free.model.moe_layers()[0].gate.bias.abs().sum()) > 0
    assert float(none.model.moe_layers()[0].gate.bias.abs().sum()) == 0
    share = experiments.routing_by_class(free.model, tok, val_ids, n_seqs=2, block_size=32)
    assert share.shape == (4, args.n_routed_experts)
    finite = share[~share.isnan().any(1)]
    assert torch.allclose(finite.sum(1), torch.ones(len(finite)))


def test_same_seed_same_initial_model():
    *_, args = _tiny()
    a = experiments.balanced_model(args, experiments.Method("a"), seed=3)
    b = experiments.balanced_model(args, experiments.Method("b", "sequence", 0.1), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert b.moe_layers()[0].balance_loss == "sequence" and b.moe_layers()[0].alpha == 0.1


def test_seed_sweep_varies_with_the_seed_and_repeats_with_it():
    _, train_ids, val_ids, args = _tiny()
    cfg = TrainConfig(steps=2, batch_size=2, block_size=32, warmup=1, eval_every=2, eval_batches=1, seed=99)
    free = experiments.Method("free", gamma=0.05)
    sweep = experiments.seed_sweep([free], args, train_ids, val_ids, cfg, seeds=[1, 2, 1])
    a, b, again = sweep["free"]
    assert a.val_loss != b.val_loss and a.val_loss == again.val_loss
    assert torch.equal(a.loads, again.loads) and not torch.equal(a.loads, b.loads)
    fig = experiments.sweep_figure(sweep)  # one point per seed, one mean marker per method
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 3 + 1
    with pytest.raises(ValueError, match="seeds"):
        experiments.seed_sweep([free], args, train_ids, val_ids, cfg, seeds=[])


def test_char_class():
    assert [experiments.char_class(c) for c in "7a \n+."] == ["digit", "letter", "space", "space", "punct", "punct"]


def test_simulate_router():
    sim = experiments.simulate_router(gamma=0.01, alpha=0.0, steps=40)
    assert set(sim.loads) == {"none", "aux", "aux_free"}
    assert sim.loads["none"].shape == (40, 16) and int(sim.loads["none"][0].sum()) == 256 * 4
    assert torch.equal(sim.vio["none"], sim.vio["aux"])  # α = 0: the aux run is the unbalanced run
    assert float(sim.drift["aux"].abs().max()) == 0.0 and bool((sim.kept["none"] == 1.0).all())
    assert sim.settled("vio", "aux_free") < 0.5 * sim.settled("vio", "none")
    assert sim.settled("kept", "aux_free") < 1.0  # balance is paid for in preference


def test_simulate_router_uses_the_given_bias_update():
    calls = []

    def counting(bias, load, gamma):
        calls.append(1)
        return moe.bias_update(bias, load, gamma)

    experiments.simulate_router(steps=7, update=counting)
    assert len(calls) == 7


def test_balance_tradeoff_finds_a_balancing_range_for_both_and_overshoot_at_the_ends():
    trade = experiments.balance_tradeoff([0.01, 3.0], [1e-4, 3e-3, 0.3], steps=60)
    (a_small, v_small, _), (a_mid, v_mid, k_mid) = trade["aux"]
    assert v_mid < 0.5 < v_small and k_mid < 1.0
    vios = [v for _, v, _ in trade["aux_free"]]
    assert vios[1] < 0.5 and vios[0] > vios[1] and vios[2] > vios[1]  # too slow and too fast both lose


def test_v3_training_steps_follow_the_batch_schedule():
    steps = experiments.v3_training_steps()
    assert 2.3e5 < steps["steps"] < 2.5e5 and steps["tokens_per_step_at_full_batch"] == 4096 * 15360
    # γ = 0 for the last 500B tokens, all at the full batch
    assert steps["steps"] - steps["bias_steps"] == pytest.approx(500e9 / (4096 * 15360))


def test_collapsed_max_vio_is_what_a_collapsed_router_measures():
    load = moe.expert_load(torch.tensor([[0, 1, 2, 3]] * 10), 16)
    assert moe.max_vio(load) == pytest.approx(experiments.collapsed_max_vio(16, 4))
